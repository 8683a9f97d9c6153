"""The corrupted-data experiment of section 3, Q2 (Table 1).

For a standard model S and a robust model R, on examples that *both* classify correctly:

1. binarise each model's attribution span, ``B = 1[M > lambda * max(M)]`` on its CAM (Eq. 1,
   upsampled to the image);
2. the difference mask keeps everything except the span S attends to and R ignores:
   ``mask = 1 - B_S * (1 - B_R)``;
3. corrupt by the Hadamard product ``x * mask``, for clean images and for each model's PGD
   adversarial examples;
4. report each model's accuracy on original clean, corrupted clean, original adversarial and
   corrupted adversarial data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attacks.adaptive import objective
from ..attacks.pgd import pgd
from .cam import cam


@torch.no_grad()
def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean()) if len(y) else float("nan")


def span_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Binarised attribution span (N, 1, H, W) of the true class."""
    r = cam(model, x, y)
    m = r.upsampled(tuple(x.shape[-2:]))
    peak = m.flatten(1).amax(1).view(-1, 1, 1)
    return (m > lam * peak).float()[:, None]


def corruption_experiment(standard: nn.Module, robust: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps: float = 8 / 255, steps: int = 10, lam: float = 0.5, seed: int = 0) -> dict[str, Any]:
    standard.eval()
    robust.eval()
    with torch.no_grad():
        both = (standard(x).argmax(1) == y) & (robust(x).argmax(1) == y)
    idx = both.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    out: dict[str, Any] = {"n_total": int(len(y)), "n_used": int(len(idx)), "used_indices": idx.tolist(),
                           "lambda": lam, "eps": eps, "steps": steps}
    if len(idx) == 0:
        return out
    mask = span_mask(standard, xs, ys, lam) * (1 - span_mask(robust, xs, ys, lam))
    keep = 1 - mask  # white = kept (Fig. 1 (d))
    out["masked_fraction"] = float(mask.mean())
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for name, model in (("standard", standard), ("robust", robust)):
        adv = pgd(objective(model, ys, "ce", "joint"), xs, eps, eps / 4, steps, generator=gen, y=ys)
        out[name] = {"original_clean": _acc(model, xs, ys), "corrupted_clean": _acc(model, xs * keep, ys),
                     "original_adv": _acc(model, adv, ys), "corrupted_adv": _acc(model, adv * keep, ys)}
    out["_tensors"] = {"x": xs, "keep": keep}
    return out
