"""Robustness evaluation.

For AGAIN models the white-box attack targets the joint loss of Eq. 7 (main + ASE logits), the
paper's adaptive protocol of section 5.2.2; attacking only the final logits overstates AGAIN
models because the ASE gate is an argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import AgainModel
from .attacks.pgd import pgd


def logits_and_aux(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eval-mode forward of any model: ``(logits, aux_logits or None)``."""
    if isinstance(model, AgainModel):
        return model(x, return_aux=True)
    return model(x), None


def joint_ce(model: nn.Module, y: torch.Tensor):
    """Per-example CE of the main logits, plus the ASE term for AGAIN models (Eq. 7)."""
    def loss(x: torch.Tensor) -> torch.Tensor:
        logits, aux = logits_and_aux(model, x)
        out = F.cross_entropy(logits, y, reduction="none")
        if aux is not None:
            out = out + model.aux_weight * F.cross_entropy(aux, y, reduction="none")
        return out
    return loss


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             eps: float = 0.0, steps: int = 10, step_size: float | None = None, seed: int = 0) -> float:
    """Clean accuracy (``eps == 0``) or PGD-``steps`` robust accuracy (L-inf, random start,
    joint loss for AGAIN models), in eval mode and fp32. Returns a fraction in [0, 1]."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    correct = 0
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            if eps > 0:
                xb = pgd(joint_ce(model, yb), xb, eps, step_size or eps / 4, steps, generator=gen)
            correct += int((_predict(model, xb) == yb).sum())
    finally:
        model.train(was)
    return correct / max(1, len(y))
