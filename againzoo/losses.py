"""The joint loss of AGAIN, Eq. 7: ``CE(main logits, y) + aux_weight * CE(ASE logits, y)``.

The paper writes the two terms with equal weight (``aux_weight = 1``). TRADES and MART terms live
with their methods in :mod:`againzoo.training.methods`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def joint_loss(
    logits: torch.Tensor,
    aux_logits: torch.Tensor | None,
    targets: torch.Tensor,
    aux_weight: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 7; with ``aux_logits=None`` it is plain cross-entropy (a batch trained without AGAIN)."""
    loss = F.cross_entropy(logits, targets, reduction=reduction)
    if aux_logits is not None and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(aux_logits, targets, reduction=reduction)
    return loss
