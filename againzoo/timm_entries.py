"""The zoo names as timm entry points: ``timm.create_model('again_resnet18', pretrained=True)``.

``again_resnet18``, ``again_preactresnet18``, ``again_wrn34_10`` and ``again_vgg16`` are registered in
timm on ``import againzoo`` and built by ``build_model_with_cfg``; ``pretrained=True`` goes through
the zoo registry (:func:`againzoo.pretrained.load_pretrained`), and ``hf-hub:`` / ``local-dir:``
names load againzoo checkpoints.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model

from .adapter import AgainModel
from .errors import CheckpointError, ConfigError
from .factory import AGAIN_KWARGS, GENERIC, ZOO
from .models import _base
from .models._base import cifar_cfg, has_weights_source, stats_to_model_args
from .pretrained import load_pretrained
from .registry import by_timm_name, entries


def _zoo_cfgs() -> dict[str, dict[str, Any]]:
    """Default cfgs of the again_* entries: one tag per published dataset (``again_resnet18.cifar10``),
    listed by ``timm.list_pretrained()``; the weights come from the zoo registry."""
    cfgs: dict[str, dict[str, Any]] = {}
    try:
        published = entries()
    except Exception:  # noqa: BLE001 - a broken registry must not break `import againzoo`
        published = []
    for name, arch in ZOO.items():
        base = cifar_cfg(first_conv=f"backbone.{get_pretrained_cfg(arch).first_conv}", classifier=("backbone.fc", "ase.fc"))
        tags = [e for e in published if e.timm_arch == name]
        for e in tags:
            cfgs[e.timm_name] = dict(base, hf_hub_id=e.repo_id, num_classes=100 if e.dataset == "cifar100" else 10)
        if not tags:
            cfgs[name] = base
    cfgs[GENERIC] = {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "mean": (0.0, 0.0, 0.0),
                     "std": (1.0, 1.0, 1.0), "classifier": "ase.fc", "license": "apache-2.0"}
    return cfgs


default_cfgs = generate_default_cfgs(_zoo_cfgs())


def _again_model(backbone_arch: str, **kwargs: Any) -> AgainModel:
    """What ``build_model_with_cfg`` instantiates for an again_* entry: the AGAIN options of
    ``kwargs`` go to :class:`AgainModel`, the rest to the backbone."""
    again = {k: kwargs.pop(k) for k in AGAIN_KWARGS if k in kwargs}
    return AgainModel(timm.create_model(backbone_arch, **kwargs), **again)


def _zoo_weights(name: str, cfg: Any, kwargs: dict[str, Any]) -> torch.nn.Module:
    """``timm.create_model('<name>.<tag>', pretrained=True)`` of a zoo model: the registry entry with
    that architecture and pretrained tag (no tag: cifar10's), loaded sha256-checked by
    :func:`againzoo.pretrained.load_pretrained`."""
    tag = cfg if isinstance(cfg, str) else getattr(cfg, "tag", None)
    rest = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                                                         "num_classes")}
    if rest:
        raise ConfigError(f"pretrained {name} takes its options from its config.json; drop {sorted(rest)}")
    entry = by_timm_name(name, tag)
    if entry is None:
        known = ", ".join(e.timm_name for e in entries() if e.timm_arch == name) or "none"
        raise CheckpointError(f"no published weights for {name}.{tag or 'cifar10'}; published for {name}: {known}")
    return load_pretrained(entry.model, True, num_classes=kwargs.get("num_classes"), dataset=entry.dataset)


def _zoo_entry(name: str) -> Callable[..., AgainModel]:
    def entry(pretrained: bool = False, **kwargs: Any) -> AgainModel:
        cfg, overlay = kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay") or {}
        if kwargs.pop("features_only", False):
            raise ConfigError(f"{name} has no features_only form; use its backbone {ZOO[name]!r} "
                              f"(timm.create_model('{ZOO[name]}', features_only=True))")
        if pretrained and not has_weights_source(cfg, overlay):
            # the zoo's own weights (sha256-checked, Hub or the local copy): the registry's loader
            return _zoo_weights(name, cfg, kwargs)
        return build_model_with_cfg(partial(_again_model, ZOO[name]), name, pretrained, **stats_to_model_args(kwargs))

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"AGAIN model around the CIFAR backbone {ZOO[name]!r} (AGAIN options and backbone kwargs)."
    return entry


for _name in ZOO:
    globals()[_name] = register_model(_zoo_entry(_name))
# the plain CIFAR backbones' published weights (the AGAIN models' twins): resnet18_cifar.<tag>
_base.ZOO_WEIGHTS = _zoo_weights


def _generic_model(backbone_arch: str, overlay: dict[str, Any], **kwargs: Any) -> AgainModel:
    again = {k: kwargs.pop(k) for k in AGAIN_KWARGS if k in kwargs}
    return AgainModel(timm.create_model(backbone_arch, pretrained_cfg_overlay=overlay, **kwargs), **again)


@register_model
def again_generic(pretrained: bool = False, backbone: str | None = None, backbone_cfg: dict[str, Any] | None = None,
                  **kwargs: Any) -> AgainModel:
    """AGAIN around any timm model ``backbone`` (``again_<timm name>`` of :func:`againzoo.create_model`):
    the architecture its checkpoints record, so that ``timm.create_model('local-dir:<checkpoint>',
    pretrained=True)`` rebuilds and loads the whole model. ``backbone_cfg``: the backbone's
    ``pretrained_cfg_overlay`` (input size, the statistics applied inside)."""
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise ConfigError(f"again_generic needs backbone=<a timm model name>, got {backbone!r}")
    if kwargs.pop("features_only", False):
        raise ConfigError(f"again_generic has no features_only form; use its backbone {backbone!r}")
    overlay = {k: tuple(v) if isinstance(v, list) else v for k, v in (backbone_cfg or {}).items()}
    return build_model_with_cfg(partial(_generic_model, backbone, overlay), GENERIC, pretrained, **kwargs)
