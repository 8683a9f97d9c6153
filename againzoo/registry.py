"""The zoo's pretrained weights: one table, consulted by ``pretrained=True``.

Each entry maps (model name, dataset) to a Hub repo, the weights file, its sha256 (checked after
every download) and the metrics its eval.json reported. Entries are added only for checkpoints
that were trained and evaluated with this package and pushed with ``againzoo push``; a model
without an entry has no published weights yet, and ``pretrained=True`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PretrainedEntry:
    repo_id: str
    sha256: str
    filename: str = "model.safetensors"
    revision: str | None = None
    recipe: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # copied from the pushed eval.json


REGISTRY: dict[tuple[str, str], PretrainedEntry] = {}


def lookup(name: str, dataset: str) -> PretrainedEntry | None:
    return REGISTRY.get((name, dataset))
