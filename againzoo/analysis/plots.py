"""PNG figures of the analyses (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    _plt().close(fig)
    return path


def _img(x: np.ndarray) -> np.ndarray:
    x = np.clip(x.transpose(1, 2, 0), 0, 1)
    return x[..., 0] if x.shape[-1] == 1 else x


def image_grid(path: Path, images: np.ndarray, rows: Sequence[tuple[str, np.ndarray | None, str]],
               titles: Sequence[str] | None = None) -> Path:
    """One column per image; first row the images, then one row per (label, maps or images, kind)
    with kind 'overlay' (a map over the image), 'mask' (grey map) or 'image'."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.6 * n, 1.6 * (1 + len(rows))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(_img(images[j]), cmap="gray")
        if titles:
            axes[0, j].set_title(titles[j], fontsize=7)
        for i, (label, data, kind) in enumerate(rows, start=1):
            ax = axes[i, j]
            if kind == "overlay":
                ax.imshow(_img(images[j]), cmap="gray")
                ax.imshow(data[j], cmap="jet", alpha=0.5)
            elif kind == "mask":
                ax.imshow(data[j], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(_img(data[j]), cmap="gray")
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def asc_scatter(path: Path, a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, lam: float) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    ax1.scatter(b, a, s=6, alpha=0.5)
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax1.set(xlabel=f"ASC {name_b}", ylabel=f"ASC {name_a}", title=f"per-image ASC (lambda={lam})")
    bins = np.linspace(0, 1, 26)
    ax2.hist(a, bins, alpha=0.6, label=f"{name_a} (mean {a.mean():.3f})")
    ax2.hist(b, bins, alpha=0.6, label=f"{name_b} (mean {b.mean():.3f})")
    ax2.set(xlabel="ASC", ylabel="images", title="distribution")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def embedding_plot(path: Path, results: Sequence[tuple[str, dict[str, Any]]]) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(len(results), 2, figsize=(9, 4 * len(results)), squeeze=False)
    for i, (name, r) in enumerate(results):
        for j, kind in enumerate(("clean", "adversarial")):
            pts = r["_points"][kind]
            ax = axes[i, j]
            sc = ax.scatter(pts[:, 0], pts[:, 1], c=r["_labels"], cmap="tab10", s=6)
            ax.set_title(f"{name}: {kind} ({r['method']}), compactness {r[f'compactness_{kind}']:.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(sc, ax=axes[i, 1], fraction=0.04)
    return _save(fig, path)


def gap_plot(path: Path, results: Sequence[dict[str, Any]]) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, r in enumerate(results):
        s, name, c = r["series"], Path(r["run"]).name, f"C{k}"
        axes[0].plot(s["epoch"], s["train_clean_acc"], c + "--", label=f"{name} train")
        axes[0].plot(s["epoch"], s["test_clean_acc"], c + "-", label=f"{name} test")
        axes[1].plot(s["epoch"], s["train_robust_acc"], c + "--", label=f"{name} train")
        axes[1].plot(s["epoch"], s["test_robust_acc"], c + "-", label=f"{name} test")
    axes[0].set(xlabel="epoch", ylabel="accuracy", title="standard generalisation (clean)")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="robust generalisation (PGD)")
    for ax in axes:
        ax.legend(fontsize=7)
    return _save(fig, path)
