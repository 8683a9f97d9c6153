"""Checkpoints: ``save_pretrained`` / ``from_pretrained``.

A checkpoint directory is also a Hugging Face Hub repo: ``model.safetensors`` (weights only, no
pickle) and ``config.json`` with timm's keys (``architecture``, ``num_classes``,
``num_features``, ``pretrained_cfg``), the backbone's ``model_args``, an ``again`` section
(``null`` for a plain model) and ``againzoo_version``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .adapter import AgainModel
from .errors import CheckpointError
from .factory import Normalized, build_model
from .io import atomic_write_json, load_tensors, save_tensors

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, (AgainModel, Normalized)) else model


def model_config(model: nn.Module, label_names: list[str] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of a model built by :func:`againzoo.factory.build_model`."""
    backbone = _backbone(model)
    cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
    arch = cfg.get("architecture") or type(backbone).__name__
    args = {k: v for k, v in getattr(backbone, "_model_args", {}).items()
            if k not in ("num_classes", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    pcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
            if k in ("input_size", "mean", "std", "interpolation", "crop_pct", "first_conv", "classifier",
                     "normalize_in_model", "license")}
    if label_names is not None:
        pcfg["label_names"] = list(label_names)
    out: dict[str, Any] = {
        "architecture": arch,
        "num_classes": int(backbone.num_classes),
        "num_features": int(getattr(backbone, "num_features", 0)),
        "model_args": args,
        "pretrained_cfg": pcfg,
        "again": model.again_config() if isinstance(model, AgainModel) else None,
        "againzoo_version": __version__,
    }
    out.update(extra or {})
    return out


def save_pretrained(model: nn.Module, directory: str | Path, config: dict[str, Any] | None = None,
                    label_names: list[str] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomically)."""
    directory = Path(directory)
    config = config or model_config(model, label_names)
    atomic_write_json(directory / CONFIG, config)
    save_tensors(directory / WEIGHTS, model.state_dict(), metadata={"format": "pt", "againzoo_version": __version__})
    return directory


def model_from_config(config: dict[str, Any], num_classes: int | None = None) -> nn.Module:
    """Build the (untrained) model described by a ``config.json``."""
    if num_classes is not None and num_classes != config["num_classes"]:
        raise CheckpointError(f"num_classes mismatch: the checkpoint has {config['num_classes']} classes, "
                              f"{num_classes} were requested")
    args = dict(config.get("model_args") or {})
    pcfg = config.get("pretrained_cfg") or {}
    if "input_size" in pcfg or "mean" in pcfg:
        overlay = {k: tuple(pcfg[k]) for k in ("input_size", "mean", "std") if k in pcfg}
        args["pretrained_cfg_overlay"] = {**args.get("pretrained_cfg_overlay", {}), **overlay}
    again = config.get("again")
    if again is not None:
        again = {k: v for k, v in again.items() if k in ("layer", "alpha", "hff", "aux_weight", "layout", "per_sample_gammas")}
    return build_model(config["architecture"], config["num_classes"], again, **args)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: missing or unexpected keys (or shape mismatches) name the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{source} does not match the model ({'; '.join(parts)})")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{source}: shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def load_local(directory: str | Path, num_classes: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint directory (``config.json`` + ``model.safetensors``) in eval mode."""
    directory = Path(directory)
    cfg_path = directory / CONFIG
    if not cfg_path.exists():
        raise CheckpointError(f"no {CONFIG} in {directory}")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    model = model_from_config(config, num_classes)
    state, _ = load_tensors(directory / WEIGHTS)
    load_state(model, state, str(directory / WEIGHTS))
    return model.to(device).eval()


def from_pretrained(source: str | Path, num_classes: int | None = None, device: str | torch.device = "cpu",
                    return_dir: bool = False) -> nn.Module | tuple[nn.Module, Path]:
    """Load a checkpoint directory (strict, eval mode)."""
    directory = Path(source)
    if not directory.is_dir():
        raise CheckpointError(f"{source} is not a checkpoint directory")
    model = load_local(directory, num_classes, device)
    return (model, directory) if return_dir else model
