"""Generalisation gaps (the paper's Figure 3) from runs' ``metrics.jsonl``: train vs test clean
accuracy (standard generalisation) and train vs test PGD accuracy (robust generalisation) per
epoch, and the gaps ``train - test``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import read_jsonl

KEYS = ("train_clean_acc", "test_clean_acc", "train_robust_acc", "test_robust_acc")


def gaps(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise DataError(f"{run_dir} has no metrics.jsonl (not a run directory?)")
    rows = [r for r in read_jsonl(path) if isinstance(r, dict) and all(r.get(k) is not None for k in KEYS)]
    if not rows:
        raise DataError(f"{path} has no epochs with train and test accuracies (empty, or trained with "
                        f"eval.n_train/n_test set to 0)")
    series = {k: [r[k] for r in rows] for k in KEYS}
    series["epoch"] = [r["epoch"] + 1 for r in rows]
    series["standard_gap"] = [a - b for a, b in zip(series["train_clean_acc"], series["test_clean_acc"])]
    series["robust_gap"] = [a - b for a, b in zip(series["train_robust_acc"], series["test_robust_acc"])]
    return {"run": str(run_dir), "series": series, "final_standard_gap": series["standard_gap"][-1],
            "final_robust_gap": series["robust_gap"][-1]}
