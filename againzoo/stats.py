"""Intervals for accuracies measured on a finite test set, and for the difference of two models.

* :func:`wilson`: the 95% Wilson score interval of one accuracy ``p`` on ``n`` images.
* :func:`paired_bootstrap`: the mean of per-image results (averaged over seeds) with a 95%
  percentile-bootstrap interval over the images, and the same for the difference from a second
  model evaluated on the *same* images (paired: both resampled with the same indices), which is
  far tighter than comparing two separate intervals.
* :func:`seed_bootstrap`: the same difference with an interval that also covers the training seeds
  (a two-level bootstrap: seeds, then images), and the difference seed by seed.
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


def seed_bootstrap(per_model: Sequence[np.ndarray], other: Sequence[np.ndarray], reps: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """The difference of two models' per-image results (one 0/1 array per training seed, all on the
    same images) with a 95% interval over **seeds and images**: each replicate draws the seeds with
    replacement (as pairs, seed ``s`` of one model with seed ``s`` of the other, when both have the
    same seeds; each model's own otherwise), then the images with replacement (the same for both),
    and takes the difference of the means. ``per_seed``: the difference of each seed pair on all
    images. With one seed it is :func:`paired_bootstrap`'s interval; with few seeds the seed draw is
    coarse (three seeds give ten distinct draws), so read it beside ``per_seed``."""
    a, b = np.asarray(per_model, dtype=float), np.asarray(other, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"seed_bootstrap needs (seeds, images) arrays on the same images, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    weights = np.zeros((reps, n))  # how often each image is drawn in each replicate, / n
    np.add.at(weights, (np.repeat(np.arange(reps), n), rng.integers(0, n, reps * n)), 1.0 / n)
    ma, mb = weights @ a.T, weights @ b.T  # (reps, seeds): each seed's mean on the drawn images
    rows = np.arange(reps)[:, None]
    paired = len(a) == len(b)
    sa = rng.integers(0, len(a), (reps, len(a)))
    sb = sa if paired else rng.integers(0, len(b), (reps, len(b)))
    d = ma[rows, sa].mean(1) - mb[rows, sb].mean(1)
    out: dict[str, Any] = {"diff": float(a.mean() - b.mean()),
                           "diff_ci": [float(v) for v in np.percentile(d, [2.5, 97.5])],
                           "seeds": [len(a), len(b)], "paired_seeds": paired, "n": n}
    if paired:
        out["per_seed"] = [float(v) for v in a.mean(1) - b.mean(1)]
    return out
