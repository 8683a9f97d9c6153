"""Content hashes that bind a checkpoint's two files to each other and every record to its weights.

A robustness number attached to the wrong weights is the worst failure a model zoo can have, so
nothing here is a habit; each link is a hash a reader (or a loader) can check:

* ``model.safetensors`` carries, in its metadata, the **model definition** it was saved with (the
  part of ``config.json`` that decides what the weights compute: ``architecture``, ``num_classes``,
  ``model_args``, ``again``, ``normalization``, ``backbone``) and its sha256 (``model_config_sha256``);
* ``config.json`` carries ``weights_sha256``, the sha256 of ``model.safetensors``;
* every record about the weights (``eval.json``, ``robustbench.json``, the checkpoint's card, the
  zoo registry, an ONNX export's ``metadata_props``, analysis records) carries ``weights_sha256``.

:func:`verify` runs on every load: a flipped byte in the tensor data, or an edited mean/std, is a
one-line :class:`~againzoo.errors.CheckpointError` naming the file and what differs. A checkpoint
written before these hashes existed loads as before, with a note. Hashing costs one read of the
file (a 42.7 MiB fp32 ResNet-18: 0.05 s on a 2-core CPU; ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MODEL_KEYS = ("architecture", "num_classes", "model_args", "again", "normalization", "backbone")
META_CONFIG, META_DIGEST = "model_config", "model_config_sha256"
WEIGHTS_KEY = "weights_sha256"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_definition(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``config.json`` that decides what the weights compute."""
    return {k: config.get(k) for k in MODEL_KEYS}


def definition_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(model_definition(config)).encode()).hexdigest()


def stamp_metadata(config: dict[str, Any], metadata: dict[str, str]) -> dict[str, str]:
    """The safetensors metadata of weights saved with ``config``: the model definition and its sha256."""
    return {**metadata, META_CONFIG: _canonical(model_definition(config)), META_DIGEST: definition_digest(config)}


def differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ (``normalization.mean``)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for k in sorted(set(saved) | set(now), key=str):
            out += differences(saved.get(k), now.get(k), f"{prefix}{k}.")
        return out
    return [] if _canonical(saved) == _canonical(now) else [prefix.rstrip(".")]


def verify(directory: str | Path, config: dict[str, Any], metadata: dict[str, str],
           weights_name: str = "model.safetensors", config_name: str = "config.json",
           actual: str | None = None) -> str | None:
    """Check a checkpoint's two files against each other; raise one line naming the file and what
    differs. Returns a note when the checkpoint carries no hashes (written before they existed).
    ``actual``: the weights' sha256 when the caller has it already."""
    directory = Path(directory)
    weights, cfg = directory / weights_name, directory / config_name
    recorded = config.get(WEIGHTS_KEY)
    if recorded is not None:
        actual = actual or sha256_of(weights)
        if actual != recorded:
            raise CheckpointError(f"{weights}: its sha256 {actual[:16]}... is not the {str(recorded)[:16]}... that "
                                  f"{cfg} records: the weights were changed or damaged after they were saved")
    digest = metadata.get(META_DIGEST)
    if digest is not None and digest != definition_digest(config):
        try:
            saved = json.loads(metadata.get(META_CONFIG, "{}"))
        except json.JSONDecodeError:
            saved = {}
        changed = differences(saved, model_definition(config)) or ["the model definition"]
        raise CheckpointError(f"{cfg}: {', '.join(changed[:4])} differ from what {weights} was saved with (edited "
                              f"after saving, or a config.json of other weights); restore it or save the model again")
    if recorded is None and digest is None:
        return f"{directory} carries no content hashes (saved before againzoo recorded them): not verified"
    return None


def check_record(record: dict[str, Any], weights: str | Path, record_path: str | Path,
                 actual: str | None = None) -> None:
    """A record (eval.json, a card's source) that names other weights than ``weights`` is refused.
    ``actual``: the weights' sha256 when the caller has it already."""
    named = record.get(WEIGHTS_KEY)
    if named is None:
        return
    actual = actual or sha256_of(weights)
    if stale_record(record, actual):
        raise CheckpointError(f"{record_path} describes weights with sha256 {str(named)[:16]}..., but {weights} "
                              f"has {actual[:16]}...: the record is stale or belongs to another checkpoint")


def stale_record(record: dict[str, Any], weights_sha256: str) -> bool:
    named = record.get(WEIGHTS_KEY)
    return named is not None and named != weights_sha256
