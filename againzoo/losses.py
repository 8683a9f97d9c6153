"""The joint loss of AGAIN, Eq. 7: ``CE(main logits, y) + aux_weight * CE(ASE logits, y)``.

The paper writes the two terms with equal weight (``aux_weight = 1``). With several ASE sites the
ASE term is the mean of the heads' cross-entropies (the authors' code: ``CE + 2 * mean``, i.e.
``aux_weight = 2``). TRADES and MART terms live with their methods in
:mod:`againzoo.training.methods`.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import ShapeError

Aux = Union[torch.Tensor, Sequence[torch.Tensor], None]


def aux_heads(aux: Aux) -> list[torch.Tensor]:
    """The ASE logits of each site: ``model(..., return_aux=True)`` gives a tensor for one site and
    a tuple for several."""
    if aux is None:
        return []
    return [aux] if isinstance(aux, torch.Tensor) else list(aux)


def primary_aux(aux: Aux) -> torch.Tensor | None:
    """The ASE logits of the primary (last) site, whose argmax gates the final features."""
    heads = aux_heads(aux)
    return heads[-1] if heads else None


def aux_mean(aux: Aux, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | float:
    """``mean over the sites of fn(aux logits)``; 0 without aux logits."""
    heads = aux_heads(aux)
    if not heads:
        return 0.0
    return sum(fn(a) for a in heads) / len(heads)


def check_labels(targets: torch.Tensor, num_classes: int) -> None:
    """Raise :class:`ShapeError` unless ``targets`` are (N,) integer classes in [0, num_classes)."""
    if not isinstance(targets, torch.Tensor) or targets.ndim != 1:
        raise ShapeError(f"expected (N,) integer class labels, got {getattr(targets, 'shape', type(targets).__name__)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ShapeError(f"expected integer class labels, got dtype {targets.dtype}")
    if targets.numel():
        lo, hi = torch.aminmax(targets)
        if int(lo) < 0 or int(hi) >= num_classes:
            raise ShapeError(f"labels must be in [0, {num_classes}), got values in [{int(lo)}, {int(hi)}]")


def joint_loss(
    logits: torch.Tensor,
    aux_logits: Aux,
    targets: torch.Tensor,
    aux_weight: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 7; with ``aux_logits=None`` it is plain cross-entropy (a batch trained without AGAIN).

    ``targets`` must be integer classes in ``[0, C)`` (a one-line :class:`ShapeError` otherwise)."""
    check_labels(targets, logits.shape[-1])
    loss = F.cross_entropy(logits, targets, reduction=reduction)
    if aux_weight:
        loss = loss + aux_weight * aux_mean(aux_logits, lambda a: F.cross_entropy(a, targets, reduction=reduction))
    return loss
