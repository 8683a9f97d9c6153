"""Projected gradient descent (Madry et al. 2018), L-inf and L2, with a pluggable loss.

The attack maximises ``loss_fn(x_adv).sum()`` where ``loss_fn`` returns one loss per example, so
the same routine serves training (against AGAIN's joint loss of Eq. 7), evaluation (CE, margin,
adaptive losses), FGSM (one step) and C&W-inf (the margin loss).

For evaluation, ``loss_fn`` may return ``(loss, logits)`` and ``y`` be given: then every iterate
is checked and an example keeps the first iterate that fooled the model (the strongest evidence,
as AutoAttack does), instead of the last one.

The loop makes no host syncs (``againzoo.host_sync``): per-example choices are ``torch.where``
selections, never boolean indexing, so on a GPU the iterations queue up without the host waiting.
"""

from __future__ import annotations

from typing import Callable

import torch

LossFn = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
NORMS = ("Linf", "L2")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-example vector ``(N,)`` shaped to broadcast against a batch ``x``."""
    return v.view(-1, *([1] * (x.ndim - 1)))


def _l2_normalize(v: torch.Tensor) -> torch.Tensor:
    return v / _bcast(v.flatten(1).norm(dim=1).clamp_min(1e-12), v)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball of ``norm``."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    n = _bcast(delta.flatten(1).norm(dim=1), delta)
    return delta * (eps / n.clamp_min(1e-12)).clamp(max=1.0)


def random_init(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform start in the L-inf ball, or a uniform-radius start in the L2 ball."""
    if norm == "Linf":
        return (torch.rand(x.shape, device=x.device, generator=generator, dtype=x.dtype) * 2 - 1) * eps
    d = _l2_normalize(torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype))
    r = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, generator=generator, dtype=x.dtype)
    return d * r * eps


def pgd(
    loss_fn: LossFn,
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "Linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximise ``loss_fn`` within the ``norm`` ball of radius ``eps`` around ``x`` (images in [0, 1]).

    ``init`` is an optional starting perturbation (TRADES starts from small Gaussian noise).
    Returns detached adversarial images.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = x.detach()
    if init is not None:
        delta = init.detach().clone()
    elif random_start:
        delta = random_init(x, eps, norm, generator)
    else:
        delta = torch.zeros_like(x)
    delta = ((x + project(delta, eps, norm)).clamp(0, 1) - x)
    best: torch.Tensor | None = None
    fooled: torch.Tensor | None = None
    track = y is not None
    for i in range(steps + 1 if track else steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            out = loss_fn(x + delta)
            loss, logits = out if isinstance(out, tuple) else (out, None)
            grad = torch.autograd.grad(loss.sum(), delta)[0] if i < steps else None
        with torch.no_grad():
            if track and logits is not None:
                now = logits.argmax(1) != y
                if best is None:
                    best, fooled = (x + delta).detach(), now
                else:  # torch.where, not best[mask] = ...: a boolean index is a host sync per step
                    best = torch.where(_bcast(now & ~fooled, x), x + delta, best)
                    fooled = fooled | now
            if grad is None:
                break
            g = grad.sign() if norm == "Linf" else _l2_normalize(grad)
            delta = project(delta.detach() + step_size * g, eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    x_last = (x + delta).detach()
    if best is None:
        return x_last
    return torch.where(_bcast(fooled, x), best, x_last)


def fgsm(loss_fn: LossFn, x: torch.Tensor, eps: float, norm: str = "Linf", y: torch.Tensor | None = None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one full-budget step from ``x``."""
    return pgd(loss_fn, x, eps, eps, 1, norm, random_start=False, y=y)
