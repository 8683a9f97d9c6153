"""Attribution Span Enlargement (ASE), AGAIN section 4.1, Eq. 4.

An auxiliary head, global average pooling + ``Linear(C, num_classes)``, whose weight rows act as
per-class channel weights for the features ``A`` at the hooked layer:

* training (label-mixed gate, Eq. 4)::

      A_hat = A * (alpha * W[y] + (1 - alpha) * W[y'])      y' = y[randperm]

* inference (predicted-label gate)::

      A_hat = A * W[argmax(aux_logits)]

  deterministic: no fake labels at inference.

The auxiliary logits ``Linear(GAP(A))`` are returned alongside for the joint loss of Eq. 7.
The inference gate is an argmax, which has no gradient; ``gate="straight_through"`` keeps the
hard gate in the forward pass and routes the backward pass through the softmax-weighted gate
``softmax(aux_logits) @ W`` (BPDA, Athalye et al. 2018), for adaptive attacks.
"""

from __future__ import annotations

import torch
from torch import nn

from .hff import LAYOUTS

GATES = ("hard", "straight_through")


class AttributionSpanEnlargement(nn.Module):
    """GAP + Linear head that gates the feature channels by its class weights.

    Args:
        num_features: channels ``C`` of the hooked features.
        num_classes: classes of the auxiliary head (the backbone's classes).
        alpha: weight of the true label's channel weights in training, in [0.5, 1].
        layout: where the channel axis is, ``"NCHW"``, ``"NHWC"`` or ``"NLC"``.
    """

    def __init__(self, num_features: int, num_classes: int, alpha: float = 0.6, layout: str = "NCHW"):
        super().__init__()
        if not 0.5 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0.5, 1] (the paper's range), got {alpha}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.alpha = alpha
        self.layout = layout
        self.fc = nn.Linear(num_features, num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooling to (N, C)."""
        if self.layout == "NCHW":
            return x.flatten(2).mean(dim=2)
        return x.flatten(1, -2).mean(dim=1)

    def _broadcast(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N, C) channel weights -> shape broadcastable against ``x``."""
        if self.layout == "NCHW":
            return w.reshape(w.shape + (1,) * (x.ndim - 2))
        return w.reshape(w.shape[:1] + (1,) * (x.ndim - 2) + w.shape[1:])

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        fake_targets: torch.Tensor | None = None,
        gate: str = "hard",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(gated features, aux logits)``.

        In training mode ``targets`` are required; ``fake_targets`` default to a within-batch
        shuffle of them. In eval mode the gate uses the predicted class (``gate`` selects the
        backward rule of that argmax).
        """
        aux_logits = self.fc(self.pool(x))
        weight = self.fc.weight
        if self.training:
            if targets is None:
                raise ValueError("ASE needs targets in training mode")
            if fake_targets is None:
                fake_targets = targets[torch.randperm(targets.shape[0], device=targets.device)]
            w = self.alpha * weight.index_select(0, targets) + (1.0 - self.alpha) * weight.index_select(0, fake_targets)
        else:
            if gate not in GATES:
                raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
            w = weight.index_select(0, aux_logits.argmax(dim=1))  # ArgMax -> Gather in ONNX
            if gate == "straight_through":
                soft = torch.softmax(aux_logits, dim=1) @ weight
                w = soft + (w - soft).detach()
        return x * self._broadcast(w.to(x.dtype), x), aux_logits

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, layout={self.layout}"
