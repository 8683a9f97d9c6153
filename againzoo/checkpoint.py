"""Checkpoint directories on disk: ``save_pretrained`` / ``load_local`` and the ``config.json`` shape.

A checkpoint directory is also a Hugging Face Hub repo: ``model.safetensors`` (weights only, no
pickle) and ``config.json`` in the shape of timm's ``save_for_hf`` (``architecture``,
``num_classes``, ``num_features``, ``pretrained_cfg``, ``model_args``), plus againzoo's ``again``
section (``null`` for a plain model), ``backbone``, ``normalization`` and ``againzoo_version``.
Loading is strict and never unpickles. Where a directory comes from (a Hub repo, the zoo's
registry) is :mod:`againzoo.hub`'s and :mod:`againzoo.pretrained`'s business.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .version import __version__
from .adapter import AgainModel
from .errors import CheckpointError, OutputError
from .factory import AGAIN_KWARGS, GENERIC, ZOO, Normalized, build_model
from .integrity import WEIGHTS_KEY, sha256_of, stamp_metadata, verify
from .io import atomic_write_json, load_tensors, replace_dir, save_tensors, write_safetensors
from .models._base import input_stats

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
log = logging.getLogger(__name__)


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, (AgainModel, Normalized)) else model


TIMM_CFG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "first_conv", "classifier",
                 "license")
MODEL_ARGS_DROPPED = ("num_classes", "pretrained_cfg", "cache_dir", "pretrained_model_args", "features_only")


def _zoo_name(backbone_arch: str) -> str | None:
    return next((name for name, arch in ZOO.items() if arch == backbone_arch), None)


def model_config(model: nn.Module, label_names: list[str] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of a model built by :func:`againzoo.factory.build_model`, in the shape of
    timm's ``save_for_hf`` (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
    ``label_names``, ``model_args``, ``pretrained_cfg``) so that ``timm.create_model('local-dir:...')``
    and ``'hf-hub:...'`` rebuild it, plus againzoo's ``again``, ``backbone`` and ``normalization``.

    An AGAIN model around a zoo backbone is the timm entry ``again_<name>`` (its ``model_args``
    carry the AGAIN options); every model's ``pretrained_cfg`` says identity mean/std (the model
    normalises inside); the statistics it applies are ``normalization`` (and, for the CIFAR
    backbones, the model arguments ``norm_mean``/``norm_std``)."""
    backbone = _backbone(model)
    bcfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    backbone_arch = bcfg.get("architecture") or type(backbone).__name__
    args = {k: v for k, v in getattr(backbone, "_model_args", {}).items() if k not in MODEL_ARGS_DROPPED}
    mean, std = ([float(f"{v:.7g}") for v in stats] for stats in input_stats(model))  # float32 buffers
    if getattr(backbone, "normalizes_input", False):  # a CIFAR backbone: statistics are its own arguments
        args.pop("pretrained_cfg_overlay", None)
        args.update(norm_mean=list(mean), norm_std=list(std))
    else:  # a timm backbone normalised by its wrapper: the statistics travel as the cfg it is built with
        overlay = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (args.get("pretrained_cfg_overlay") or {}).items()}
        args["pretrained_cfg_overlay"] = {**overlay, "mean": list(mean), "std": list(std)}
    cfg = dict(getattr(model, "pretrained_cfg", None) or bcfg)
    pcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in TIMM_CFG_KEYS and v is not None}
    n = len(mean)
    pcfg.update(mean=[0.0] * n, std=[1.0] * n, num_classes=int(backbone.num_classes))
    architecture = backbone_arch
    if isinstance(model, AgainModel):  # a timm entry of ours rebuilds the whole model: again_<zoo name>, else
        # again_generic with the backbone as an argument (timm.create_model('local-dir:...') loads either)
        architecture = _zoo_name(backbone_arch) or GENERIC
        if architecture == GENERIC:  # timm's local-dir loader passes its own pretrained_cfg_overlay
            args["backbone"] = backbone_arch
            args["backbone_cfg"] = args.pop("pretrained_cfg_overlay", {})
        args.update(model.again_config())
        if bcfg.get("first_conv"):
            pcfg["first_conv"] = f"backbone.{bcfg['first_conv']}"
        pcfg["classifier"] = [f"backbone.{bcfg.get('classifier') or 'fc'}", "ase.fc"]
    pool = getattr(backbone, "global_pool", None)
    pool = getattr(pool, "pool_type", pool)
    out: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": int(backbone.num_classes),
        "num_features": int(getattr(backbone, "num_features", 0)),
    }
    if isinstance(pool, str) and pool:
        out["global_pool"] = pool
    if label_names is not None:
        out["label_names"] = list(label_names)
    out.update({
        "model_args": args,
        "pretrained_cfg": pcfg,
        "backbone": backbone_arch,
        "again": model.again_config() if isinstance(model, AgainModel) else None,
        "normalization": {"mean": list(mean), "std": list(std), "inside_model": True},
        "againzoo_version": __version__,
    })
    out.update(extra or {})
    return out


# what a checkpoint directory holds: the pair, and the records that describe exactly those weights
CHECKPOINT_FILES = (WEIGHTS, CONFIG, "eval.json", "robustbench.json", "README.md")


def save_pretrained(model: nn.Module, directory: str | Path, config: dict[str, Any] | None = None,
                    label_names: list[str] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` as one unit.

    A directory that is (or would be) a checkpoint alone (nothing but :data:`CHECKPOINT_FILES`) is
    written complete into a temporary sibling and swapped in: at every instant a reader sees the
    previous complete pair or the new one (and the previous pair's eval.json / card go with it:
    they described the old weights). A directory that holds other files too (a run directory's
    top level) gets the two files each atomically, the weights first, so ``config.json`` never
    stands beside weights it does not describe the shape of."""
    directory = Path(directory)
    config = config or model_config(model, label_names)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"cannot save a checkpoint to {directory}: it is a file, not a directory")
    own = not directory.exists() or all(p.name in CHECKPOINT_FILES for p in directory.iterdir())
    if own:
        return replace_dir(directory, lambda tmp: write_pair(tmp, state, config))
    save_tensors(directory / WEIGHTS, state, metadata=stamp_metadata(config, {"format": "pt", "againzoo_version": __version__}))
    atomic_write_json(directory / CONFIG, {**config, WEIGHTS_KEY: sha256_of(directory / WEIGHTS)})
    return directory


def write_pair(folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any],
               metadata: dict[str, str] | None = None) -> None:
    """Write ``model.safetensors`` (its metadata: the model definition of ``config``, hashed) and then
    ``config.json`` (with the weights' sha256) into ``folder``, a temporary one that is swapped in whole
    (:func:`againzoo.io.replace_dir`); :mod:`againzoo.integrity` checks the two on every load."""
    meta = stamp_metadata(config, {"format": "pt", "againzoo_version": __version__, **(metadata or {})})
    write_safetensors(state, folder / WEIGHTS, meta)
    (folder / CONFIG).write_text(json.dumps({**config, WEIGHTS_KEY: sha256_of(folder / WEIGHTS)}, indent=2) + "\n")


def model_from_config(config: dict[str, Any], num_classes: int | None = None) -> nn.Module:
    """Build the (untrained) model described by a ``config.json``: this package's (both shapes, the
    timm-style one and that of againzoo 0.1, whose ``architecture`` was the backbone's and whose
    ``pretrained_cfg`` held the statistics) or one written by timm's ``save_for_hf``."""
    if num_classes is not None and num_classes != config["num_classes"]:
        raise CheckpointError(f"num_classes mismatch: the checkpoint has {config['num_classes']} classes, "
                              f"{num_classes} were requested")
    arch = config["architecture"]
    args = {k: v for k, v in (config.get("model_args") or {}).items() if k not in MODEL_ARGS_DROPPED}
    again = config.get("again")
    if (arch in ZOO or arch == GENERIC) and "again" in config and again is None:
        raise CheckpointError(f"config.json disagrees with itself: architecture {arch} is an AGAIN model but "
                              f"'again' is null")
    if arch in ZOO or arch == GENERIC:  # again_<name> / again_generic: AGAIN options live in model_args
        opts = {k: args.pop(k) for k in AGAIN_KWARGS if k in args}
        backbone = args.pop("backbone", None) if arch == GENERIC else ZOO[arch]
        if not isinstance(backbone, str):
            raise CheckpointError(f"config.json of an {GENERIC} checkpoint names no backbone (model_args.backbone)")
        again, arch = {**opts, **(again or {})}, backbone
        if "backbone_cfg" in args:
            args["pretrained_cfg_overlay"] = args.pop("backbone_cfg")
    elif again is not None:
        again = {k: v for k, v in again.items() if k in AGAIN_KWARGS}
    # the cfg the backbone is built with: the config's (input size; for againzoo 0.1 and timm-native
    # checkpoints also the statistics, which the model built here applies inside), then model_args'
    pcfg = config.get("pretrained_cfg") or {}
    overlay = {k: (tuple(pcfg[k]) if isinstance(pcfg[k], list) else pcfg[k])
               for k in ("input_size", "interpolation", "crop_pct", "mean", "std") if k in pcfg}
    overlay.update({k: tuple(pcfg[f"model_{k}"]) for k in ("mean", "std") if f"model_{k}" in pcfg})
    overlay.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in (args.get("pretrained_cfg_overlay") or {}).items()})
    if overlay:
        args["pretrained_cfg_overlay"] = overlay
    return build_model(arch, config["num_classes"], again, **args)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: missing or unexpected keys (or shape mismatches) name the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    has_ase = any(k.startswith("ase.") for k in state)
    if has_ase != isinstance(model, AgainModel) and (missing or unexpected):
        raise CheckpointError(f"{source}: the weights {'hold' if has_ase else 'lack'} an ASE head but config.json "
                              f"describes {'a model without' if has_ase else 'an'} AGAIN (its 'again' section "
                              f"disagrees with the weights)")
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
    for k, v in state.items():  # fp16 / bf16 weights upcast on load; an integer where a float belongs does not
        if v.is_floating_point() != own[k].is_floating_point() or (v.dtype == torch.bool) != (own[k].dtype == torch.bool):
            raise CheckpointError(f"{source}: {k} is stored as {v.dtype}, the model holds {own[k].dtype} "
                                  f"(a damaged or foreign file)")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: {k} holds NaN or infinite values (a damaged file, or weights of a "
                                  f"diverged training run)")
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
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    for key, kind in (("architecture", str), ("num_classes", int)):
        if not isinstance(config.get(key), kind):
            raise CheckpointError(f"{cfg_path}: '{key}' must be a {kind.__name__}, got {config.get(key)!r}")
    model = model_from_config(config, num_classes)
    if not (directory / WEIGHTS).exists() and (directory / "pytorch_model.bin").exists():
        raise CheckpointError(f"{directory} has only pytorch_model.bin, a pickle, which againzoo never loads; "
                              f"save it with safetensors (timm: save_for_hf(..., safe_serialization=True))")
    state, metadata = load_tensors(directory / WEIGHTS)
    records = _record_digests(directory)
    actual = sha256_of(directory / WEIGHTS) if config.get(WEIGHTS_KEY) or records else None  # hashed once
    note = verify(directory, config, metadata, WEIGHTS, CONFIG, actual)
    if note is not None:
        log.info(note)
    for name, digest in records.items():  # a record beside the weights that describes other weights
        if digest != actual:
            warnings.warn(f"{directory / name} describes other weights (sha256 {digest[:16]}..., these are "
                          f"{actual[:16]}...): its numbers are stale", UserWarning, stacklevel=2)
    if isinstance(model, Normalized) and not any(k.startswith("backbone.") for k in state):
        load_state(model.backbone, state, str(directory / WEIGHTS))  # a timm-native checkpoint
    else:
        load_state(model, state, str(directory / WEIGHTS))
    names = config.get("label_names")
    if isinstance(names, list) and len(names) == config["num_classes"]:
        attach_label_names(model, names)
    return model.to(device).eval()


def attach_label_names(model: nn.Module, names: list[str]) -> None:
    """The class names in the model's ``pretrained_cfg['label_names']`` (timm's place for them):
    ``model.pretrained_cfg["label_names"][logits.argmax()]`` names a prediction."""
    target = model.backbone if isinstance(model, Normalized) else model
    target.pretrained_cfg = {**dict(getattr(target, "pretrained_cfg", None) or {}), "label_names": tuple(names)}


def _record_digests(directory: Path) -> dict[str, str]:
    """The ``weights_sha256`` that the records beside a checkpoint name (eval.json, robustbench.json)."""
    named = {}
    for name in ("eval.json", "robustbench.json"):
        try:
            digest = json.loads((directory / name).read_text()).get(WEIGHTS_KEY)
        except (OSError, ValueError, AttributeError):
            continue
        if digest is not None:
            named[name] = digest
    return named


def model_arch(model: nn.Module) -> str:
    return (getattr(_backbone(model), "pretrained_cfg", None) or {}).get("architecture", "")
