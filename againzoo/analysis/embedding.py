"""Penultimate-feature embeddings (the paper's Figure 4) and a compactness score.

Features are the backbone's pre-logits (after global pooling; for AGAIN models, after the ASE
gate) for clean and adversarial inputs, embedded in 2-D with t-SNE (scikit-learn), or PCA when
there are too few points for t-SNE. Compactness is the mean distance of a point to its class
centroid divided by the mean distance between class centroids, in the full feature space:
lower means tighter, better separated classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapter import AgainModel
from ..factory import Normalized


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    bb = model.backbone if isinstance(model, (AgainModel, Normalized)) else model
    store: list[torch.Tensor] = []
    head = bb.get_classifier()
    h = head.register_forward_hook(lambda m, i, o: store.append(i[0].detach().flatten(1)))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        h.remove()
    return torch.cat(store)


def compactness(feats: np.ndarray, labels: np.ndarray) -> float:
    classes = np.unique(labels)
    cents = np.stack([feats[labels == c].mean(0) for c in classes])
    intra = np.mean([np.linalg.norm(feats[labels == c] - cents[i], axis=1).mean() for i, c in enumerate(classes)])
    d = np.linalg.norm(cents[:, None] - cents[None], axis=-1)
    inter = d[np.triu_indices(len(classes), 1)].mean() if len(classes) > 1 else np.nan
    return float(intra / inter)


def embed_2d(feats: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    if len(feats) >= 30:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, (len(feats) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats), "t-SNE"
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(feats), "PCA"


def embedding_experiment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, steps: int = 10,
                         seed: int = 0) -> dict[str, Any]:
    from ..attacks.adaptive import objective
    from ..attacks.pgd import pgd

    gen = torch.Generator(device=x.device).manual_seed(seed)
    adv = pgd(objective(model, y, "ce", "joint"), x, eps, eps / 4, steps, generator=gen, y=y)
    out: dict[str, Any] = {"n": int(len(y)), "eps": eps, "steps": steps, "_points": {}}
    labels = y.cpu().numpy()
    for name, inp in (("clean", x), ("adversarial", adv)):
        f = penultimate(model, inp).cpu().numpy()
        out[f"compactness_{name}"] = compactness(f, labels)
        pts, how = embed_2d(f, seed)
        out["_points"][name] = pts
        out["method"] = how
    out["_labels"] = labels
    return out
