"""Resumable evaluation: the finished parts of a long attack suite, kept on disk.

An evaluation of the ``paper`` suite on 1,000 images takes hours on a 2-core CPU (the official
AutoAttack alone is ~2,400 forward-backward passes per image, twice for gated models). With a state
directory, :func:`againzoo.evaluation.evaluate` stores each finished unit (one attack of the suite,
one slice of images of an official AutoAttack run, the soundness checks) and, called again after a
``kill -9`` or the end of a session, reloads what is done and computes only the rest. Every attack
draws from its own seeded generator, so a resumed evaluation gives exactly the result of an
uninterrupted one.

A unit keeps what the record needs: the per-example results, and an AGAIN model's adversarial
images (its gate diagnostics read them); a plain model's state is therefore kilobytes, small enough
to commit and continue in another session (``againzoo zoo build`` keeps it beside the weights).

The units of one evaluation live in ``<state_dir>/<fingerprint>/``, one safetensors file each
(tensors, plus a JSON description in the metadata), written atomically: a unit is whole or absent.
The fingerprint hashes everything the results depend on (the model's parameters and buffers, the
images and labels, the suite, its budgets and the package version), so units of another model or
setting are never reused. Each unit also records the seconds it took, so the record of an
evaluation that spanned several calls can state what the whole of it cost (:meth:`EvalState.cost`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .io import load_tensors, save_tensors, writable_dir

_INFO = "againzoo.eval_unit"  # the metadata key of a unit's JSON description
_SECONDS = "againzoo.eval_unit_seconds"  # ... and of the seconds its computation took


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any]) -> str:
    """sha256 of the model's state, the images, the labels and the evaluation's settings."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    for t in (x, y):
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class EvalState:
    """The finished units of one evaluation (``None`` root: nothing is kept, everything computed)."""

    def __init__(self, root: str | Path | None, digest: str = "") -> None:
        self.dir = None if root is None else writable_dir(Path(root) / digest[:16])
        self.computed = self.reused = 0
        self._reused_seconds, self._reused_untimed = 0.0, 0  # what reused units recorded; how many recorded none

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".safetensors")

    def done(self, key: str) -> bool:
        """Whether an earlier call finished the unit."""
        return self.dir is not None and self._path(key).exists()

    def _read(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], float | None] | None:
        """``(tensors, info, seconds it took)`` of a finished unit (seconds None where not recorded)."""
        if not self.done(key):
            return None
        tensors, meta = load_tensors(self._path(key))
        return tensors, json.loads(meta[_INFO]), float(meta[_SECONDS]) if _SECONDS in meta else None

    def unit(self, key: str, compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
             reuse: Callable[[dict[str, torch.Tensor]], bool] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The unit's ``(tensors, info)``: loaded when an earlier call finished it, else computed and stored.
        ``reuse`` rejects a stored unit that lacks what this call needs: it is computed again and
        replaces the stored one, whose other tensors it keeps."""
        stored = self._read(key)
        if stored is not None and (reuse is None or reuse(stored[0])):
            self.reused += 1
            if stored[2] is None:
                self._reused_untimed += 1
            else:
                self._reused_seconds += stored[2]
            return stored[0], stored[1]
        t0 = time.time()
        tensors, info = compute()
        seconds = time.time() - t0
        self.computed += 1
        if stored is not None:
            tensors = {**stored[0], **tensors}
        if self.dir is not None:
            save_tensors(self._path(key), tensors, {_INFO: json.dumps(info), _SECONDS: f"{seconds:.2f}"})
        return tensors, info

    def cost(self, seconds: float) -> dict[str, Any]:
        """What an evaluation that took ``seconds`` in this call cost in all: how many of its units this
        call computed and how many it reused from earlier calls, and, where every reused unit recorded
        its seconds, the total over all calls (this call's plus the reused units')."""
        out: dict[str, Any] = {"units_computed": self.computed, "units_reused": self.reused}
        if self.reused and not self._reused_untimed:
            out["seconds_all_calls"] = round(seconds + self._reused_seconds, 2)
        return out
