"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks"), the white-box half of AutoAttack.

APGD runs ``n_iter`` steps with momentum 0.75 from a random start, beginning with step size
``2 eps`` and halving it, per example, at checkpoints ``w_j = ceil(p_j N)``
(``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) when fewer than
``rho = 0.75`` of the steps since the last checkpoint increased the loss, or when neither the step
size nor the best loss changed since then; on halving it restarts from the best point.

``apgd`` takes any per-example objective ``obj(x) -> (loss, logits)`` (CE for APGD-CE, the
targeted DLR for APGD-T, or an adaptive loss); ``apgd_targeted`` loops over the top-k
non-true classes of the clean logits as targets, on the examples not yet fooled.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .pgd import NORMS, _bcast, _l2_normalize, project

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def checkpoints(n_iter: int) -> list[int]:
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * n_iter) for q in p[1:] if q <= 1})


def _grad(obj: Objective, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss, logits = obj(x)
        grad = torch.autograd.grad(loss.sum(), x)[0]
    return loss.detach(), logits.detach(), grad.detach()


def apgd(obj: Objective, x: torch.Tensor, y: torch.Tensor, eps: float, n_iter: int = 100, norm: str = "Linf",
         rho: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """One APGD run; returns the first fooling iterate per example, else the best-loss one."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = x.detach()
    n = x.shape[0]
    if norm == "Linf":
        t = torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1
        x_adv = x + eps * t / _bcast(t.flatten(1).abs().amax(1), x)
    else:
        t = torch.randn(x.shape, device=x.device, generator=generator)
        x_adv = x + eps * _l2_normalize(t)
    x_adv = x_adv.clamp(0, 1)

    def step_from(point: torch.Tensor, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        g = grad.sign() if norm == "Linf" else _l2_normalize(grad)
        return ((x + project(point + _bcast(size, x) * g - x, eps, norm)).clamp(0, 1))

    size = torch.full((n,), 2.0 * eps, device=x.device)
    loss, logits, grad = _grad(obj, x_adv)
    fooled = logits.argmax(1) != y
    x_fooled = x_best = x_prev = x_adv  # never written in place: the loop rebinds them
    loss_best, grad_best = loss, grad
    ck = set(checkpoints(n_iter))
    improved_count = torch.zeros(n, device=x.device)
    loss_best_ck = loss_best
    reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
    last_ck = 0
    for k in range(n_iter):
        with torch.no_grad():
            z = step_from(x_adv, grad, size)
            a = 0.75 if k > 0 else 1.0
            x_new = x + project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev) - x, eps, norm)
            x_prev, x_adv = x_adv, x_new.clamp(0, 1)
        loss, logits, grad = _grad(obj, x_adv)
        with torch.no_grad():  # per-example choices by torch.where: no boolean indexing, no host sync
            now = logits.argmax(1) != y
            x_fooled = torch.where(_bcast(now & ~fooled, x), x_adv, x_fooled)
            fooled |= now
            better = loss > loss_best
            improved_count += better.float()
            b = _bcast(better, x)
            x_best, grad_best = torch.where(b, x_adv, x_best), torch.where(b, grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            if k + 1 in ck:
                h = k + 1 - last_ck
                cond1 = improved_count < rho * h
                cond2 = ~reduced_last & (loss_best <= loss_best_ck)
                reduce = cond1 | cond2
                size = torch.where(reduce, size / 2, size)
                r = _bcast(reduce, x)
                x_adv, grad = torch.where(r, x_best, x_adv), torch.where(r, grad_best, grad)
                improved_count.zero_()
                loss_best_ck = loss_best
                reduced_last = reduce
                last_ck = k + 1
    return torch.where(_bcast(fooled, x), x_fooled, x_best).detach()


def apgd_targeted(make_obj: Callable[[torch.Tensor, torch.Tensor], Objective], logits_fn: Callable[[torch.Tensor], torch.Tensor],
                  x: torch.Tensor, y: torch.Tensor, eps: float, n_iter: int = 100, n_targets: int = 9,
                  norm: str = "Linf", generator: torch.Generator | None = None) -> torch.Tensor:
    """APGD-T: ``make_obj(idx, target)`` builds the targeted objective for the examples ``idx``;
    targets are the 2nd..(k+1)-th
    classes of the clean logits; each run attacks only the examples still classified correctly."""
    with torch.no_grad():
        clean = logits_fn(x)
    order = clean.sort(1, descending=True)[1]
    x_out = x.clone()
    alive = clean.argmax(1) == y
    for j in range(1, min(n_targets, clean.shape[1] - 1) + 1):
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        target = order[idx, j]
        obj = make_obj(idx, target)
        adv = apgd(obj, x[idx], y[idx], eps, n_iter, norm, generator=generator)
        with torch.no_grad():
            ok = logits_fn(adv).argmax(1) == y[idx]
        x_out[idx[~ok]] = adv[~ok]
        alive[idx[~ok]] = False
    return x_out
