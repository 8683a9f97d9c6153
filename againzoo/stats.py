"""Intervals for accuracies measured on a finite test set, and for the difference of two models.

* :func:`wilson`: the 95% Wilson score interval of one accuracy ``p`` on ``n`` images.
* :func:`paired_bootstrap`: the mean of per-image results (averaged over seeds) with a 95%
  percentile-bootstrap interval over the images, and the same for the difference from a second
  model evaluated on the *same* images (paired: both resampled with the same indices), which is
  far tighter than comparing two separate intervals.
* :func:`newcombe`: the difference of two accuracies from two *independent* samples (Newcombe's
  hybrid score interval, method 10 of Newcombe 1998), for records without per-image results; on
  paired data it is conservative.

Per-image results travel in ``eval.json`` as strings of ``0``/``1`` (:func:`to_bits`,
:func:`from_bits`), one character per evaluated image in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

Z95 = 1.96


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy ``p`` measured on ``n`` images."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """95% interval of ``p1 - p2`` for two independent samples (Newcombe's hybrid score method)."""
    l1, u1 = wilson(p1, n1)
    l2, u2 = wilson(p2, n2)
    d = p1 - p2
    return d - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5, d + ((u1 - p1) ** 2 + (p2 - l2) ** 2) ** 0.5


def to_bits(v: torch.Tensor) -> str:
    """A boolean vector as eval.json's per-example string."""
    return "".join("1" if b else "0" for b in v.tolist())


def from_bits(s: str) -> np.ndarray:
    """eval.json's per-example string as a 0/1 array."""
    return np.frombuffer(s.encode(), dtype=np.uint8) - ord("0")


def paired_bootstrap(per_model: Sequence[np.ndarray], other: Sequence[np.ndarray] | None = None, reps: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """Mean over seeds and images of ``per_model`` (one 0/1 array per seed, all on the same images),
    with a 95% bootstrap interval over the images; with ``other`` (another model's arrays on the same
    images), also ``diff`` = this minus that and its paired interval ``diff_ci``."""
    rng = np.random.default_rng(seed)
    a = np.mean(per_model, axis=0)  # per image: the share of seeds that got it right
    n = len(a)
    idx = rng.integers(0, n, (reps, n))
    out: dict[str, Any] = {"mean": float(a.mean()), "ci": [float(v) for v in np.percentile(a[idx].mean(1), [2.5, 97.5])],
                           "n": n}
    if other is not None:
        b = np.mean(other, axis=0)
        if len(b) != n:
            raise ValueError(f"paired comparison needs results on the same images, got {n} and {len(b)}")
        d = a - b
        out["diff"] = float(d.mean())
        out["diff_ci"] = [float(v) for v in np.percentile(d[idx].mean(1), [2.5, 97.5])]
    return out
