"""Attribution Span Coverage, AGAIN Eq. 2: the share of a map's elements above ``lambda`` times
its maximum::

    ASC(M) = (1/N) * sum_i 1[M_i > lambda * max(M)]        (lambda = 0.5 in the paper)

computed per image on its CAM (Eq. 1, upsampled to the image size by default) and averaged over a
dataset. :func:`compare` reproduces section 3's Q1 statistic: the share of images where model A's
ASC exceeds model B's, with both means.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .cam import cam


def asc(maps: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Eq. 2 for each map of a (N, ...) batch -> (N,)."""
    flat = maps.flatten(1)
    peak = flat.amax(1, keepdim=True)
    return (flat > lam * peak).float().mean(1)


def dataset_asc(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, lam: float = 0.5,
                batch_size: int = 128, upsample: bool = True, head: str = "main", target: str = "label") -> torch.Tensor:
    """Per-image ASC of the CAM of the true class (``target="label"``) or the predicted class."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        cls = y[i:i + batch_size] if (target == "label" and y is not None) else None
        r = cam(model, xb, cls, head=head)
        maps = r.upsampled(tuple(xb.shape[-2:])) if upsample else r.maps
        out.append(asc(maps, lam).cpu())
    return torch.cat(out)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Section 3, Q1: how often A's ASC exceeds B's, and both means."""
    return {"share_a_greater": float((a > b).float().mean()), "share_equal": float((a == b).float().mean()),
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "n": int(len(a))}
