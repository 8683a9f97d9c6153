"""Where a model runs and how it is measured in passing: device choice and clean / PGD accuracy.

Shared by the trainer (per-epoch monitoring), the evaluation and the gate diagnostics, so that none
of them imports another for these helpers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attacks import adaptive as A
from .attacks.pgd import pgd
from .errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported: expected auto, cpu, cuda or cuda:N")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def joint_ce(model: nn.Module, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-example CE of the main logits, plus the ASE term for AGAIN models (Eq. 7)."""
    obj = A.objective(model, y, "ce", "joint")
    return lambda x: obj(x)[0]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             eps: float = 0.0, steps: int = 10, step_size: float | None = None, seed: int = 0) -> float:
    """Clean accuracy (``eps == 0``) or PGD-``steps`` robust accuracy (L-inf, random start,
    joint loss for AGAIN models), in eval mode and fp32. Returns a fraction in [0, 1]."""
    was = model.training
    model.eval()
    dev = model_device(model)
    gen = torch.Generator(device=dev).manual_seed(seed)
    correct = 0
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            if eps > 0:
                xb = pgd(A.objective(model, yb, "ce", "joint"), xb, eps, step_size or eps / 4, steps,
                         generator=gen, y=yb)
            with torch.no_grad():
                correct += int((model(xb).argmax(1) == yb).sum())
    finally:
        model.train(was)
    return correct / max(1, len(y))
