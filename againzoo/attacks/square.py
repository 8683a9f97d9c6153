"""Square Attack (Andriushchenko et al. 2020), L-inf: a score-based black-box attack, part of
AutoAttack. It needs only the model's logits, so a gradient-masking defence cannot hide from it;
Square beating the white-box attacks is a classic sign of masked gradients.

Start from vertical stripes of +-eps; at each query, re-draw +-eps (per channel) on one random
square window per image, of side ``round(sqrt(p * H * W))`` (a draw that would not change the
image is re-drawn), and keep the change if the margin
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
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    for i in range(1, n_queries):
        idx = (m_best > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        k = idx.numel()
        xc, xb = x[idx], x_best[idx]
        s = max(int(round(math.sqrt(p_selection(p_init, i, n_queries) * h * w))), 1)
        s = min(s, h - 1, w - 1) if min(h, w) > 1 else 1
        # one random window per image, as in the original algorithm
        vh = torch.randint(0, h - s + 1, (k,), device=dev, generator=generator)
        vw = torch.randint(0, w - s + 1, (k,), device=dev, generator=generator)
        in_h = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
        in_w = (cols >= vw[:, None]) & (cols < vw[:, None] + s)
        window = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # (k, 1, h, w)
        x_new = xb
        redraw = torch.ones(k, dtype=torch.bool, device=dev)
        for _ in range(10):  # re-draw proposals that would leave the image unchanged
            proposal = torch.where(window, (xc + eps * signs(k, c, 1, 1)).clamp(0, 1), xb)
            x_new = torch.where(redraw[:, None, None, None], proposal, x_new)
            redraw = ((x_new - xb).abs() < 1e-7).flatten(1).all(1)
            if not redraw.any():
                break
        m_new = -margin(logits_fn(x_new), y[idx])
        better = m_new < m_best[idx]
        x_best[idx[better]] = x_new[better]
        m_best[idx[better]] = m_new[better]
    return x_best
