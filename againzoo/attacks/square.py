"""Square Attack (Andriushchenko et al. 2020), L-inf: a score-based black-box attack, part of
AutoAttack. It needs only the model's logits, so a gradient-masking defence cannot hide from it;
Square beating the white-box attacks is a classic sign of masked gradients.

Start from vertical stripes of +-eps; at each query, re-draw +-eps (per channel) on one random
square window of side ``round(sqrt(p * H * W))`` and keep the change if the margin
``z_y - max_{j != y} z_j`` dropped. ``p`` starts at ``p_init`` and halves on AutoAttack's
schedule (rescaled to ``n_queries``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .losses import margin


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


@torch.no_grad()
def square(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float,
           n_queries: int = 5000, p_init: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    dev = x.device
    signs = lambda *shape: torch.randint(0, 2, shape, device=dev, generator=generator).float() * 2 - 1
    x_best = (x + eps * signs(n, c, 1, w)).clamp(0, 1)
    m_best = -margin(logits_fn(x_best), y)  # > 0 while correctly classified
    for i in range(1, n_queries):
        idx = (m_best > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xc, xb = x[idx], x_best[idx]
        s = max(int(round(math.sqrt(p_selection(p_init, i, n_queries) * h * w))), 1)
        s = min(s, h - 1, w - 1) if min(h, w) > 1 else 1
        vh = int(torch.randint(0, h - s + 1, (1,), generator=generator, device=dev))
        vw = int(torch.randint(0, w - s + 1, (1,), generator=generator, device=dev))
        delta = xb - xc
        delta[:, :, vh:vh + s, vw:vw + s] = eps * signs(len(idx), c, 1, 1)
        x_new = (xc + delta).clamp(0, 1)
        m_new = -margin(logits_fn(x_new), y[idx])
        better = m_new < m_best[idx]
        x_best[idx[better]] = x_new[better]
        m_best[idx[better]] = m_new[better]
    return x_best
