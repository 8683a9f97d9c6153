"""Checkpoints: ``save_pretrained`` / ``from_pretrained``.

A checkpoint directory is also a Hugging Face Hub repo: ``model.safetensors`` (weights only, no
pickle) and ``config.json`` with timm's keys (``architecture``, ``num_classes``,
``num_features``, ``pretrained_cfg``), the backbone's ``model_args``, an ``again`` section
(``null`` for a plain model) and ``againzoo_version``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .adapter import AgainModel
from .errors import CheckpointError, HubError
from .factory import AGAIN_KWARGS, ZOO, Normalized, build_model
from .models._base import input_stats
from .io import atomic_write_json, load_tensors, save_tensors

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HUB_FILES = (CONFIG, WEIGHTS, "eval.json", "README.md")


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
    zoo_name = _zoo_name(backbone_arch) if isinstance(model, AgainModel) else None
    if zoo_name is not None:
        architecture = zoo_name
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


def save_pretrained(model: nn.Module, directory: str | Path, config: dict[str, Any] | None = None,
                    label_names: list[str] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``, each atomically, the weights
    first: ``config.json`` marks a complete checkpoint, so a kill between the two writes never
    leaves a config without its weights (at worst new weights beside the previous epoch's config)."""
    directory = Path(directory)
    config = config or model_config(model, label_names)
    save_tensors(directory / WEIGHTS, model.state_dict(), metadata={"format": "pt", "againzoo_version": __version__})
    atomic_write_json(directory / CONFIG, config)
    return directory


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
    if arch in ZOO:  # again_<name>: AGAIN options live in model_args
        opts = {k: args.pop(k) for k in AGAIN_KWARGS if k in args}
        again, arch = {**opts, **(again or {})}, ZOO[arch]
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
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    for key, kind in (("architecture", str), ("num_classes", int)):
        if not isinstance(config.get(key), kind):
            raise CheckpointError(f"{cfg_path}: '{key}' must be a {kind.__name__}, got {config.get(key)!r}")
    model = model_from_config(config, num_classes)
    if not (directory / WEIGHTS).exists() and (directory / "pytorch_model.bin").exists():
        raise CheckpointError(f"{directory} has only pytorch_model.bin, a pickle, which againzoo never loads; "
                              f"save it with safetensors (timm: save_for_hf(..., safe_serialization=True))")
    state, _ = load_tensors(directory / WEIGHTS)
    if isinstance(model, Normalized) and not any(k.startswith("backbone.") for k in state):
        load_state(model.backbone, state, str(directory / WEIGHTS))  # a timm-native checkpoint
    else:
        load_state(model, state, str(directory / WEIGHTS))
    return model.to(device).eval()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, read at call time (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def network_errors() -> tuple[type[BaseException], ...]:
    """What a Hub call raises when the network, the server or the credentials fail."""
    from huggingface_hub.errors import HfHubHTTPError

    kinds: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError, TimeoutError]
    # huggingface_hub's HTTP client: httpx (or its httpx2 fork) in 1.x, requests before
    for mod, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            kinds.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (Hub errors carry multi-line server replies)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_repo_id(repo_id: str) -> str:
    """``org/name`` as the Hub accepts it, or a one-line :class:`HubError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid Hub repo id {repo_id!r}: {one_line(e)}") from None
    if repo_id.count("/") != 1:
        raise HubError(f"invalid Hub repo id {repo_id!r}: expected org/name")
    return repo_id


def download(repo_id: str, revision: str | None = None, filenames: tuple[str, ...] = HUB_FILES, *,
             cache_dir: str | Path | None = None, token: str | bool | None = None,
             local_files_only: bool | None = None, force_download: bool = False) -> Path:
    """Fetch ``filenames`` of a Hub repo (or find them in the cache) and return the snapshot folder.

    One ``snapshot_download`` with ``allow_patterns``; honours ``HF_HUB_OFFLINE`` (unless
    ``local_files_only`` says otherwise), ``HF_HOME``/``HF_HUB_CACHE`` (unless ``cache_dir``) and
    the usual token locations (unless ``token``).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline() if local_files_only is None else local_files_only
    cache = str(cache_dir) if cache_dir is not None else _cache_dir()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(filenames), cache_dir=cache,
                                        local_files_only=offline, token=token, force_download=force_download,
                                        library_name="againzoo", library_version=__version__))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{repo_id} is not in the Hugging Face cache ({cache or 'default'}) and downloading "
                              f"is {'disabled (HF_HUB_OFFLINE=1 or local_files_only)' if offline else 'not possible'}") from None
    except network_errors() as e:
        raise CheckpointError(f"could not fetch Hub repo {repo_id!r}: {one_line(e)}") from None
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"Hub repo {repo_id} has no {', '.join(missing)}")
    return folder


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def from_pretrained(source: str | Path, revision: str | None = None, num_classes: int | None = None,
                    device: str | torch.device = "cpu", return_dir: bool = False, sha256: str | None = None, *,
                    cache_dir: str | Path | None = None, token: str | bool | None = None,
                    local_files_only: bool | None = None, force_download: bool = False,
                    **again: Any) -> nn.Module | tuple[nn.Module, Path]:
    """Load a zoo model (eval mode) from a local directory, a Hub repo id, or ``hf-hub:<timm id>``.

    * a directory with ``config.json`` + ``model.safetensors``: loaded strictly;
    * ``org/name``: the same files from the Hugging Face Hub (or its cache);
    * ``hf-hub:org/name``: a model through timm's Hub loader: an againzoo checkpoint as it is, a
      plain timm model wrapped in :class:`AgainModel` with the AGAIN options ``again`` (its ASE
      head starts untrained);
    * a directory written by timm's ``save_for_hf`` (a plain timm model): loaded as that model,
      taking [0, 1] images (its cfg's mean/std applied inside).

    ``sha256`` pins the expected digest of ``model.safetensors``; a mismatch is an error.
    ``cache_dir``, ``token``, ``local_files_only`` and ``force_download`` mean what they mean in
    huggingface_hub (for Hub repo ids).
    """
    source = str(source)
    if source.startswith("hf-hub:"):
        import timm

        kw = {} if num_classes is None else {"num_classes": num_classes}
        try:
            backbone = timm.create_model(source, pretrained=True, **kw)
        except Exception as e:  # noqa: BLE001 - timm raises many kinds for a missing repo
            raise CheckpointError(f"could not load timm model {source}: {e}") from None
        if isinstance(backbone, AgainModel):  # an againzoo checkpoint on the Hub: already the whole model
            if again:
                raise CheckpointError(f"{source} is an AGAIN checkpoint; its options come from its config.json, "
                                      f"drop {sorted(again)}")
            model = backbone.to(device).eval()
        else:
            model = AgainModel(backbone, **again).to(device).eval()
        return (model, Path(source)) if return_dir else model
    directory = Path(source)
    if not directory.is_dir():
        if source.count("/") != 1 or source.startswith((".", "/")):
            raise CheckpointError(f"{source} is neither a checkpoint directory nor a Hub repo id (org/name)")
        directory = download(source, revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                             force_download=force_download)
    if sha256 is not None:
        digest = sha256_of(directory / WEIGHTS)
        if digest != sha256:
            raise CheckpointError(f"sha256 mismatch for {source}/{WEIGHTS}: expected {sha256}, got {digest}")
    model = load_local(directory, num_classes, device)
    return (model, directory) if return_dir else model


def load_pretrained(name: str, pretrained: bool | str, num_classes: int | None = None, dataset: str | None = None,
                    device: str | torch.device = "cpu", **kw: Any) -> nn.Module:
    """``create_model(name, pretrained=...)``: True consults the registry, a string is a path or repo id.

    A registry entry is fetched from the Hub (or its offline cache); when that is impossible and the
    entry's local copy (``zoo/<id>/`` of this repository) exists, that copy is loaded instead. The
    sha256 is checked either way."""
    from .factory import backbone_name
    from .registry import entries, local_dir, lookup

    if pretrained is True:
        dataset = dataset or {10: "cifar10", 100: "cifar100"}.get(num_classes or 10, "cifar10")
        entry = lookup(name, dataset)
        if entry is None:
            known = ", ".join(f"{e.model} ({e.dataset})" for e in entries()) or "none yet"
            raise CheckpointError(f"no published weights for {name} on {dataset}; published: {known}")
        try:
            directory = download(entry.repo_id, entry.revision)
            log.info("%s (%s): from the Hub repo %s (%s)", name, dataset, entry.repo_id, directory)
        except CheckpointError as e:
            directory = local_dir(entry)
            if directory is None:
                raise CheckpointError(f"{e}; and no local copy of {name} ({entry.local or 'none registered'})") from None
            log.info("%s (%s): the Hub is out of reach (%s); loading the local copy %s", name, dataset, e, directory)
        model = from_pretrained(directory, None, num_classes, device, sha256=entry.sha256)
        if entry.note:
            warnings.warn(f"{name} ({dataset}): {entry.note}", UserWarning, stacklevel=3)
    else:
        model = from_pretrained(str(pretrained), None, num_classes, device)
    arch = model_arch(model)
    expected = backbone_name(name) if name.startswith("again_") else name
    if arch != expected:
        raise CheckpointError(f"{pretrained} holds a {arch} checkpoint, not {name} ({expected})")
    return model


def model_arch(model: nn.Module) -> str:
    return (getattr(_backbone(model), "pretrained_cfg", None) or {}).get("architecture", "")


RUN_FILES = ("recipe.yaml", "metrics.jsonl", "curves.png")


def push(path: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         dry_run: bool = False, token: str | None = None) -> dict[str, Any]:
    """Push a run's selected checkpoint (``best/`` when present) to the Hugging Face Hub.

    Uploads ``model.safetensors``, ``config.json``, ``eval.json``, the run's ``recipe.yaml``,
    ``metrics.jsonl`` and ``curves.png``, and a generated ``README.md`` model card. With
    ``dry_run`` nothing leaves the machine; the returned dict lists the files and the card.
    """

    from .card import load_checkpoint_info, model_card

    check_repo_id(repo_id)
    info = load_checkpoint_info(path)  # requires config.json and eval.json
    wdir, run = info["dir"], Path(path)
    files = {name: wdir / name for name in (CONFIG, WEIGHTS, "eval.json")}
    files.update({name: run / name for name in RUN_FILES if (run / name).exists()})
    missing = [n for n, p in files.items() if not p.exists()]
    if missing:
        raise CheckpointError(f"cannot push {path}: missing {', '.join(missing)}")
    card = model_card(path, repo_id)
    plan = {"repo_id": repo_id, "private": private, "revision": revision,
            "files": sorted([*files, "README.md"]), "sizes": {n: p.stat().st_size for n, p in files.items()},
            "card": card}
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token, library_name="againzoo", library_version=__version__)
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files.items()]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, ops, revision=revision,
                                   commit_message=f"againzoo {__version__}: {info['recipe'].get('name', repo_id)}")
    except network_errors() as e:
        raise HubError(f"push to {repo_id} failed: {one_line(e)}") from None
    plan["commit"] = str(getattr(commit, "commit_url", commit))
    return plan
