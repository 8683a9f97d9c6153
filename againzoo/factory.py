"""``create_model`` / ``list_models``: AGAIN-wrapped models by name.

``again_resnet18``, ``again_preactresnet18``, ``again_wrn34_10`` and ``again_vgg16`` wrap the CIFAR
backbones of :mod:`againzoo.models` and are timm models too (registered entry points, built by
``build_model_with_cfg``): after ``import againzoo``, ``timm.create_model('again_resnet18',
pretrained=True)`` loads the zoo's weights, and ``hf-hub:`` / ``local-dir:`` names load againzoo
checkpoints. ``again_<timm name>`` wraps any other timm model (through :func:`create_model`).
"""

from __future__ import annotations

import fnmatch
from functools import partial
from typing import Any, Callable

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from torch import nn

from .adapter import AgainModel, backbone_cfg
from .errors import ConfigError
from .models._base import (buffer_stats, cifar_cfg, has_weights_source, inside_normalized, model_stats,
                           stats_to_model_args)

ZOO = {
    "again_resnet18": "resnet18_cifar",
    "again_preactresnet18": "preactresnet18",
    "again_wrn34_10": "wrn34_10",
    "again_vgg16": "vgg16_cifar",
}
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


# -- timm entry points for the zoo names ------------------------------------------------------

def _zoo_cfgs() -> dict[str, dict[str, Any]]:
    """Default cfgs of the again_* entries: one tag per published dataset (``again_resnet18.cifar10``),
    listed by ``timm.list_pretrained()``; the weights come from the zoo registry."""
    from .registry import entries

    cfgs: dict[str, dict[str, Any]] = {}
    try:
        published = entries()
    except Exception:  # noqa: BLE001 - a broken registry must not break `import againzoo`
        published = []
    for name, arch in ZOO.items():
        base = cifar_cfg(first_conv=f"backbone.{get_pretrained_cfg(arch).first_conv}", classifier=("backbone.fc", "ase.fc"))
        tags = [e for e in published if e.model == name]
        for e in tags:
            cfgs[f"{name}.{e.dataset}"] = dict(base, hf_hub_id=e.repo_id, num_classes=100 if e.dataset == "cifar100" else 10)
        if not tags:
            cfgs[name] = base
    return cfgs


default_cfgs = generate_default_cfgs(_zoo_cfgs())


def _again_model(backbone_arch: str, **kwargs: Any) -> AgainModel:
    """What ``build_model_with_cfg`` instantiates for an again_* entry: the AGAIN options of
    ``kwargs`` go to :class:`AgainModel`, the rest to the backbone."""
    again = {k: kwargs.pop(k) for k in AGAIN_KWARGS if k in kwargs}
    return AgainModel(timm.create_model(backbone_arch, **kwargs), **again)


def _zoo_entry(name: str) -> Callable[..., AgainModel]:
    def entry(pretrained: bool = False, **kwargs: Any) -> AgainModel:
        cfg, overlay = kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay") or {}
        if kwargs.pop("features_only", False):
            raise ConfigError(f"{name} has no features_only form; use its backbone {ZOO[name]!r} "
                              f"(timm.create_model('{ZOO[name]}', features_only=True))")
        if pretrained and not has_weights_source(cfg, overlay):
            # the zoo's own weights (sha256-checked, Hub or the local copy): the registry's loader
            from .hub import load_pretrained

            dataset = cfg if isinstance(cfg, str) else getattr(cfg, "tag", None)
            rest = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay",
                                                                  "cache_dir", "num_classes")}
            if rest:
                raise ConfigError(f"pretrained {name} takes its options from its config.json; drop {sorted(rest)}")
            return load_pretrained(name, True, num_classes=kwargs.get("num_classes"), dataset=dataset)
        return build_model_with_cfg(partial(_again_model, ZOO[name]), name, pretrained, **stats_to_model_args(kwargs))

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"AGAIN model around the CIFAR backbone {ZOO[name]!r} (AGAIN options and backbone kwargs)."
    return entry


for _name in ZOO:
    globals()[_name] = register_model(_zoo_entry(_name))


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
