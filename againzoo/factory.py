"""Building models by name (no weights): ``build_model``, ``list_models`` and the zoo's names.

``again_resnet18``, ``again_preactresnet18``, ``again_wrn34_10`` and ``again_vgg16`` wrap the CIFAR
backbones of :mod:`againzoo.models` (their timm entry points live in :mod:`againzoo.timm_entries`);
``again_<timm name>`` wraps any other timm model. Loading weights is :mod:`againzoo.pretrained`'s
(``create_model(..., pretrained=...)``).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import timm
import torch
from torch import nn

from .adapter import AgainModel, backbone_cfg
from .errors import ConfigError
from .models._base import buffer_stats, inside_normalized, model_stats

ZOO = {
    "again_resnet18": "resnet18_cifar",
    "again_preactresnet18": "preactresnet18",
    "again_wrn34_10": "wrn34_10",
    "again_vgg16": "vgg16_cifar",
}
GENERIC = "again_generic"  # the timm entry of AGAIN around any other timm model (checkpoints' architecture)
AGAIN_KWARGS = ("layer", "alpha", "hff", "aux_weight", "layout", "per_sample_gammas", "gate_source", "detach_gate")


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

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return buffer_stats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def build_model(arch: str, num_classes: int, again: dict[str, Any] | None = None, **model_args: Any) -> nn.Module:
    """A model that takes [0, 1] images: ``AgainModel`` around timm ``arch`` when ``again`` is a
    dict of AGAIN options, else the plain backbone (normalising inputs itself)."""
    if not timm.is_model(arch):
        raise ConfigError(f"unknown architecture {arch!r}: not a timm model (againzoo adds {', '.join(ZOO.values())})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < (1 if again is not None else 0):
        raise ConfigError(f"num_classes must be an integer >= 1 (>= 0 for a plain backbone), got {num_classes!r}")
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
