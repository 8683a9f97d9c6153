"""The zoo's pretrained weights: one table, consulted by ``pretrained=True``.

The table is ``registry.json`` beside this module (``$AGAINZOO_REGISTRY`` points elsewhere, e.g.
a private zoo or a test). Each entry maps (model name, dataset) to a Hub repo, the weights file,
its sha256 (checked after every download and before every local load), the recipe and the metrics
its eval.json reported, ``local``: the weights' path relative to the registry file, the copy
published in this repository (``zoo/<id>/model.safetensors``), used when the Hub is unreachable,
and ``note``: a caveat that ``pretrained=True`` repeats as a warning (e.g. a preliminary build).
Entries are written by ``againzoo zoo build`` only, for checkpoints trained and evaluated here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .io import atomic_write_json

DEFAULT = Path(__file__).resolve().parent / "registry.json"


@dataclass(frozen=True)
class PretrainedEntry:
    model: str
    dataset: str
    repo_id: str
    sha256: str
    filename: str = "model.safetensors"
    revision: str | None = None
    recipe: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # copied from the published eval.json
    local: str | None = None  # relative to the registry file
    note: str | None = None  # what a user must know before relying on these weights (warned on load)
    # the architecture entry the weights belong to (a timm model name: resnet18_cifar, again_resnet18;
    # None: ``model`` itself) and its timm pretrained tag (``timm.create_model('<arch>.<tag>')``; None: the dataset)
    arch: str | None = None
    tag: str | None = None
    training: dict[str, Any] | None = None  # where and how long it trained (device, minutes, img/s, epochs)

    @property
    def timm_arch(self) -> str:
        return self.arch or self.model

    @property
    def timm_tag(self) -> str:
        return self.tag or self.dataset

    @property
    def timm_name(self) -> str:
        """``timm.create_model(<this>, pretrained=True)`` loads these weights."""
        return f"{self.timm_arch}.{self.timm_tag}"


def path() -> Path:
    env = os.environ.get("AGAINZOO_REGISTRY")
    return Path(env).expanduser() if env else DEFAULT


def entries(registry: Path | None = None) -> list[PretrainedEntry]:
    p = registry or path()
    if not p.exists():
        return []
    try:
        raw = json.loads(p.read_text())
        return [PretrainedEntry(**e) for e in raw.get("entries", [])]
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"malformed zoo registry {p}: {e}") from None


def lookup(name: str, dataset: str, registry: Path | None = None) -> PretrainedEntry | None:
    return next((e for e in entries(registry) if (e.model, e.dataset) == (name, dataset)), None)


def by_timm_name(arch: str, tag: str | None, registry: Path | None = None) -> PretrainedEntry | None:
    """The entry ``timm.create_model('<arch>.<tag>', pretrained=True)`` means (no tag: cifar10's)."""
    tag = tag or "cifar10"
    return next((e for e in entries(registry) if (e.timm_arch, e.timm_tag) == (arch, tag)), None)


def local_dir(entry: PretrainedEntry, registry: Path | None = None) -> Path | None:
    """The directory of the entry's local copy, if it exists."""
    if not entry.local:
        return None
    f = ((registry or path()).parent / entry.local).resolve()
    return f.parent if f.is_file() else None


def register(entry: PretrainedEntry, registry: Path | None = None) -> Path:
    """Add or replace the entry for (model, dataset), atomically."""
    p = registry or path()
    rest = [e for e in entries(p) if (e.model, e.dataset) != (entry.model, entry.dataset)]
    data: dict[str, Any] = {"entries": [asdict(e) for e in sorted([*rest, entry], key=lambda e: (e.model, e.dataset))]}
    return atomic_write_json(p, data)
