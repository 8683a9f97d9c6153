"""``create_model`` / ``list_models``: AGAIN-wrapped models by name.

``again_resnet18``, ``again_preactresnet18``, ``again_wrn34_10`` and ``again_vgg16`` wrap the CIFAR
backbones of :mod:`againzoo.models`; ``again_<timm name>`` wraps any timm model.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import timm
import torch
from torch import nn

from .adapter import AgainModel, backbone_cfg
from .models._base import inside_normalized, model_stats
from .errors import ConfigError

ZOO = {
    "again_resnet18": "resnet18_cifar",
    "again_preactresnet18": "preactresnet18",
    "again_wrn34_10": "wrn34_10",
    "again_vgg16": "vgg16_cifar",
}
AGAIN_KWARGS = ("layer", "alpha", "hff", "aux_weight", "layout", "per_sample_gammas")


def backbone_name(name: str) -> str:
    """The timm architecture behind an ``again_*`` name."""
    if name in ZOO:
        return ZOO[name]
    if not name.startswith("again_"):
        raise ConfigError(f"model names start with 'again_' (e.g. {', '.join(ZOO)}), got {name!r}")
    arch = name[len("again_"):]
    if not timm.is_model(arch):
        raise ConfigError(f"unknown model {name!r}: {arch!r} is not a timm model; zoo models: {', '.join(ZOO)}")
    return arch


def list_models(pattern: str = "again_*", generic: bool = False) -> list[str]:
    """Zoo model names matching ``pattern``; with ``generic=True`` also ``again_<timm name>``."""
    names = list(ZOO)
    if generic:
        names += [f"again_{n}" for n in timm.list_models() if n not in ZOO.values()]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


class Normalized(nn.Module):
    """A plain timm classifier made to take [0, 1] images: applies its ``pretrained_cfg`` mean/std."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        mean, std = model_stats(backbone_cfg(backbone))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.num_classes = backbone.num_classes

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        mean, std = model_stats(backbone_cfg(self.backbone))
        return inside_normalized(backbone_cfg(self.backbone), mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def build_model(arch: str, num_classes: int, again: dict[str, Any] | None = None, **model_args: Any) -> nn.Module:
    """A model that takes [0, 1] images: ``AgainModel`` around timm ``arch`` when ``again`` is a
    dict of AGAIN options, else the plain backbone (normalising inputs itself)."""
    if not timm.is_model(arch):
        raise ConfigError(f"unknown architecture {arch!r}: not a timm model (againzoo adds {', '.join(ZOO.values())})")
    try:
        backbone = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_args)
    except TypeError as e:
        raise ConfigError(f"bad model arguments for {arch}: {e}") from None
    # what config.json records (timm >= 1.0.31 keeps them itself; older timm does not)
    backbone._model_args = {**getattr(backbone, "_model_args", {}), **model_args}
    if again is None:
        return backbone if getattr(backbone, "normalizes_input", False) else Normalized(backbone)
    unknown = set(again) - set(AGAIN_KWARGS)
    if unknown:
        raise ConfigError(f"unknown AGAIN options {sorted(unknown)}; allowed: {', '.join(AGAIN_KWARGS)}")
    return AgainModel(backbone, **again)


def create_model(name: str, num_classes: int | None = None, pretrained: bool | str = False, dataset: str | None = None,
                 **kwargs: Any) -> AgainModel:
    """Build an AGAIN model: ``create_model('again_resnet18', num_classes=100, alpha=0.6)``.

    ``num_classes`` defaults to 10 for a fresh model and to the checkpoint's for a pretrained one.

    Keyword arguments named in ``AGAIN_KWARGS`` go to :class:`AgainModel`, the rest to
    ``timm.create_model`` of the backbone (e.g. ``width=16`` for a slim ResNet).
    ``pretrained`` is ``False``, ``True`` (the zoo's registry, for ``dataset`` 'cifar10' or
    'cifar100'), a local checkpoint directory or a Hub repo id; weights are loaded strictly.
    """
    again_kw = {k: kwargs.pop(k) for k in AGAIN_KWARGS if k in kwargs}
    if pretrained:
        from .hub import load_pretrained

        if again_kw or kwargs:
            raise ConfigError(f"pretrained models take their options from config.json; drop {sorted({**again_kw, **kwargs})}")
        return load_pretrained(name, pretrained, num_classes=num_classes, dataset=dataset)
    return build_model(backbone_name(name), 10 if num_classes is None else num_classes, again_kw, **kwargs)
