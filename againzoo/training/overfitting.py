"""Catastrophic overfitting: a single-step adversarially trained model that suddenly stops being robust.

Fast adversarial training (FGSM-RS, and N-FGSM at large budgets) can collapse within an epoch: the
model learns to defeat the one-step attack it is trained on while its accuracy under a multi-step
attack falls towards zero (Wong et al. 2020, section 5; de Jorge et al. 2022). Wong et al. detect it
by a PGD check during training; so do we, on the held-out slice the trainer already measures every
epoch (``val_robust_acc``, PGD with ``eval.attack_steps`` steps, in fp32).

An epoch is flagged when its held-out PGD accuracy falls below ``eval.co_ratio`` times the best so
far **and** by at least ``eval.co_min_drop`` (absolute), so that the noise of a small slice around a
small accuracy early in training is never taken for a collapse. The trainer records the flag in the
epoch's ``metrics.jsonl`` row (``catastrophic_overfitting: true``) and, with ``eval.stop_on_co``,
ends the run there; ``againzoo zoo build`` never publishes a run with a flagged epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..io import read_jsonl

FLAG = "catastrophic_overfitting"


def collapsed(robust: float | None, best: float, ratio: float, min_drop: float) -> bool:
    """Whether a held-out PGD accuracy ``robust`` is a collapse from the best so far ``best``."""
    if robust is None or best <= 0:
        return False
    return robust < ratio * best and best - robust >= min_drop


def first_collapse(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first metrics row flagged as catastrophic overfitting, or None."""
    return next((r for r in rows if r.get(FLAG)), None)


def run_collapse(run_dir: str | Path) -> str | None:
    """One line saying where a run collapsed (from its ``metrics.jsonl``), or None if it never did."""
    row = first_collapse(read_jsonl(Path(run_dir) / "metrics.jsonl"))
    if row is None:
        return None
    return (f"catastrophic overfitting at epoch {row['epoch'] + 1}: held-out PGD accuracy {row['val_robust_acc']:.3f} "
            f"after a best of {row['co_best_val_robust']:.3f} ({Path(run_dir) / 'metrics.jsonl'})")
