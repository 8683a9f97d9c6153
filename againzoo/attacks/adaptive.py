"""Objectives for white-box attacks, including attacks adaptive to AGAIN's ASE gate.

At inference AGAIN multiplies the features by ``W[argmax(aux_logits)]``: an argmax, which passes
no gradient, so attacks on the final logits alone see a partly masked loss. The modes:

* ``standard``: the loss of the main logits (what a generic evaluation does);
* ``joint``: main loss + ``aux_weight`` x the same loss on the ASE logits (Eq. 7; the paper's
  adaptive protocol, section 5.2.2);
* ``st``: ``joint`` with a straight-through gate, hard argmax forward and softmax-weighted
  backward (BPDA, Athalye et al. 2018). Any model that exposes ``gate_mode("straight_through")``
  (AgainModel, or a toy with its own non-differentiable step) supports it;
* ``gate``: drive the ASE head to a chosen wrong class first, then attack the main head
  (see :func:`gate_targeted`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..adapter import AgainModel
from ..losses import Aux, aux_mean, primary_aux
from . import losses as L
from .pgd import pgd

MODES = ("standard", "joint", "st", "gate")


def is_again(model: nn.Module) -> bool:
    return isinstance(model, AgainModel)


def has_gate(model: nn.Module) -> bool:
    return hasattr(model, "gate_mode")


def available_modes(model: nn.Module) -> tuple[str, ...]:
    if is_again(model):
        return MODES
    if has_gate(model):
        return ("standard", "st")
    return ("standard",)


def forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Aux]:
    if is_again(model):
        return model(x, return_aux=True)
    return model(x), None


@contextlib.contextmanager
def mode_context(model: nn.Module, mode: str) -> Iterator[None]:
    if mode == "st" and has_gate(model):
        with model.gate_mode("straight_through"):
            yield
    else:
        yield


def objective(model: nn.Module, y: torch.Tensor, loss: str, mode: str,
              target: torch.Tensor | None = None) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``obj(x) -> (per-example loss, main logits)`` for ``loss`` in ce / margin / dlr / dlr_t."""
    def f(z: torch.Tensor) -> torch.Tensor:
        if loss == "ce":
            return L.ce(z, y)
        if loss == "margin":
            return L.margin(z, y)
        if loss == "dlr":
            return L.dlr(z, y)
        if loss == "dlr_t":
            return L.dlr_targeted(z, y, target)
        raise ValueError(f"unknown attack loss {loss!r}")

    weight = getattr(model, "aux_weight", 1.0)

    def obj(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, aux = forward(model, x)
        out = f(logits)
        if mode in ("joint", "st") and aux is not None:
            out = out + weight * aux_mean(aux, f)
        return out, logits
    return obj


def gate_targeted(model: AgainModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
                  norm: str = "Linf", generator: torch.Generator | None = None) -> torch.Tensor:
    """Gate-targeted attack: for the first half of the steps push the ASE head to its most likely
    wrong class ``t`` (so the gate multiplies by ``W[t]``), then attack the main head with a
    straight-through gate while keeping the ASE head on ``t``."""
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    t = primary_aux(aux).scatter(1, y[:, None], float("-inf")).argmax(1)
    to_t = lambda a: L.ce_targeted(a, t)  # noqa: E731  (every site's head towards t)

    def phase1(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, a = model(z, return_aux=True)
        return aux_mean(a, to_t), logits

    def phase2(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, a = model(z, return_aux=True)
        return L.ce(logits, y) + aux_mean(a, to_t), logits

    first = steps // 2
    x1 = pgd(phase1, x, eps, step_size, first, norm, random_start=True, generator=generator, y=y)
    with model.gate_mode("straight_through"):
        x2 = pgd(phase2, x, eps, step_size, steps - first, norm, random_start=False, init=x1 - x, y=y)
    with torch.no_grad():
        fooled1 = model(x1).argmax(1) != y
    return torch.where(fooled1.view(-1, 1, 1, 1), x1, x2)
