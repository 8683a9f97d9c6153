"""``create_model`` / ``list_models``: AGAIN-wrapped models by name.

``again_resnet18``, ``again_preactresnet18``, ``again_wrn34_10`` and ``again_vgg16`` wrap the CIFAR
backbones of :mod:`againzoo.models`; ``again_<timm name>`` wraps any timm model.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import timm

from .adapter import AgainModel
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


def create_model(name: str, num_classes: int = 10, pretrained: bool | str = False, **kwargs: Any) -> AgainModel:
    """Build an AGAIN model: ``create_model('again_resnet18', num_classes=100, alpha=0.6)``.

    Keyword arguments named in ``AGAIN_KWARGS`` go to :class:`AgainModel`, the rest to
    ``timm.create_model`` of the backbone (e.g. ``width=16`` for a slim ResNet).
    ``pretrained`` is ``False``, ``True`` (the zoo's registry), a local directory or a Hub repo id.
    """
    again_kw = {k: kwargs.pop(k) for k in AGAIN_KWARGS if k in kwargs}
    if pretrained:
        from .hub import load_pretrained

        return load_pretrained(name, pretrained, num_classes=num_classes, **again_kw, **kwargs)
    backbone = timm.create_model(backbone_name(name), pretrained=False, num_classes=num_classes, **kwargs)
    return AgainModel(backbone, **again_kw)
