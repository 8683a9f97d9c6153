"""Loading pretrained models by name or source: ``create_model``, ``from_pretrained``, ``load_pretrained``.

Resolution only: a local checkpoint directory is read by :mod:`againzoo.checkpoint`, a Hub repo id
is fetched by :mod:`againzoo.hub`, a zoo name's weights are looked up in :mod:`againzoo.registry`
(the Hub repo, else the repository's local copy; the sha256 checked either way).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter import AgainModel
from .checkpoint import WEIGHTS, load_local, model_arch, sha256_of
from .errors import CheckpointError, ConfigError
from .factory import AGAIN_KWARGS, backbone_name, build_model
from .hub import download
from .registry import entries, local_dir, lookup

log = logging.getLogger(__name__)


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
        name = entry.timm_arch  # a zoo id such as again_resnet18_w16_cpu holds an again_resnet18
    else:
        model = from_pretrained(str(pretrained), None, num_classes, device)
    arch = model_arch(model)
    expected = backbone_name(name) if name.startswith("again_") else name
    if arch != expected:
        raise CheckpointError(f"{pretrained} holds a {arch} checkpoint, not {name} ({expected})")
    return model


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
        if again_kw or kwargs:
            raise ConfigError(f"pretrained models take their options from config.json; drop {sorted({**again_kw, **kwargs})}")
        return load_pretrained(name, pretrained, num_classes=num_classes, dataset=dataset)
    zoo_id = next((e for e in entries() if e.model == name and e.timm_arch != name), None)
    if zoo_id is not None:
        raise ConfigError(f"{name} names published weights: load them with pretrained=True, or build its untrained "
                          f"architecture from {zoo_id.timm_arch} (the recipe {zoo_id.recipe} has its options)")
    return build_model(backbone_name(name), 10 if num_classes is None else num_classes, again_kw, **kwargs)
