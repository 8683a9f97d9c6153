"""Attribution Span Enlargement (ASE), AGAIN section 4.1, Eq. 4, and label-free variants of its gate.

An auxiliary head, global average pooling + ``Linear(C, num_classes)``, whose weight rows act as
per-class channel weights for the features ``A`` at the hooked site.

* training, the paper's label-mixed gate (Eq. 4, ``source="label"``)::

      A_hat = A * (alpha * W[y] + (1 - alpha) * W[y'])      y' = y[randperm]

* inference (predicted-label gate)::

      A_hat = A * W[argmax(aux_logits)]

  deterministic: no fake labels at inference.

The auxiliary logits ``Linear(GAP(A))`` are returned alongside for the joint loss of Eq. 7.

**Why variants.** With ``source="label"`` at the last feature stage the final classifier can read
the label from the gate (the row with the larger coefficient names it) and learn to copy it; at
inference it then copies the ASE head's argmax (``againzoo.gate_diagnostics`` measures this). The
label-free sources never read the labels in the forward pass:

* ``source="pred"``: ``W[argmax(aux_logits)]`` in training too (the inference gate);
* ``source="soft"``: ``softmax(aux_logits) @ W``, in training and at inference (CIFS-like,
  Yan et al. 2021): differentiable everywhere, no argmax to hide gradients;

each optionally mixed as Eq. 4 mixes, ``alpha * gate + (1 - alpha) * W[r]``, with ``r`` a uniformly
random class (``alpha = 1``: no mix). ``detach=True`` stops the main loss's gradient at the gate
rows, so ``W`` is trained by the ASE term of Eq. 7 only.

The hard inference gate is an argmax, which has no gradient; ``gate="straight_through"`` keeps the
hard gate in the forward pass and routes the backward pass through the softmax-weighted gate
``softmax(aux_logits) @ W`` (BPDA, Athalye et al. 2018), for adaptive attacks. ``force`` (a class
per example) replaces the inference gate by ``W[force]``: the diagnostics' oracle, wrong and
random gates.
"""

from __future__ import annotations

import torch
from torch import nn

from .hff import LAYOUTS

GATES = ("hard", "straight_through")
SOURCES = ("label", "pred", "soft")


class AttributionSpanEnlargement(nn.Module):
    """GAP + Linear head that gates the feature channels by its class weights.

    Args:
        num_features: channels ``C`` of the hooked features.
        num_classes: classes of the auxiliary head (the backbone's classes).
        alpha: weight of the gate's main row in training, in [0.5, 1] (paper: 0.6, true label).
        layout: where the channel axis is, ``"NCHW"``, ``"NHWC"`` or ``"NLC"``.
        source: the training gate's main row: ``"label"`` (Eq. 4), ``"pred"`` or ``"soft"``.
        detach: the main loss does not train the gate rows.
    """

    def __init__(self, num_features: int, num_classes: int, alpha: float = 0.6, layout: str = "NCHW",
                 source: str = "label", detach: bool = False):
        super().__init__()
        if not 0.5 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0.5, 1] (the paper's range), got {alpha}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if source not in SOURCES:
            raise ValueError(f"gate source must be one of {SOURCES}, got {source!r}")
        self.alpha = alpha
        self.layout = layout
        self.source = source
        self.detach = bool(detach)
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

    def _train_gate(self, weight: torch.Tensor, aux_logits: torch.Tensor, targets: torch.Tensor | None,
                    fake_targets: torch.Tensor | None) -> torch.Tensor:
        if self.source == "label":
            if targets is None:
                raise ValueError("ASE needs targets in training mode (gate source 'label')")
            if fake_targets is None:
                fake_targets = targets[torch.randperm(targets.shape[0], device=targets.device)]
            return self.alpha * weight.index_select(0, targets) + (1.0 - self.alpha) * weight.index_select(0, fake_targets)
        if self.source == "pred":
            w = weight.index_select(0, aux_logits.argmax(dim=1))
        else:
            w = torch.softmax(aux_logits.float(), dim=1).to(weight.dtype) @ weight
        if self.alpha < 1.0:  # Eq. 4's mix, with a random class instead of another example's label
            if fake_targets is None:
                fake_targets = torch.randint(0, weight.shape[0], (aux_logits.shape[0],), device=aux_logits.device)
            w = self.alpha * w + (1.0 - self.alpha) * weight.index_select(0, fake_targets)
        return w

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        fake_targets: torch.Tensor | None = None,
        gate: str = "hard",
        force: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(gated features, aux logits)``.

        In training mode the gate follows ``source`` (``targets`` required for ``"label"``;
        ``fake_targets`` default to a within-batch shuffle of them, or to random classes for the
        label-free sources). In eval mode the gate uses the predicted class (``gate`` selects the
        backward rule of that argmax), the soft prediction for ``source="soft"``, or ``force``.
        """
        aux_logits = self.fc(self.pool(x))
        weight = self.fc.weight.detach() if self.detach else self.fc.weight
        if self.training and force is None:
            w = self._train_gate(weight, aux_logits, targets, fake_targets)
        elif force is not None:
            w = weight.index_select(0, force)
        elif self.source == "soft":
            w = torch.softmax(aux_logits.float(), dim=1).to(weight.dtype) @ weight
        else:
            if gate not in GATES:
                raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
            w = weight.index_select(0, aux_logits.argmax(dim=1))  # ArgMax -> Gather in ONNX
            if gate == "straight_through":
                soft = torch.softmax(aux_logits, dim=1) @ weight
                w = soft + (w - soft).detach()
        return x * self._broadcast(w.to(x.dtype), x), aux_logits

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, layout={self.layout}, source={self.source}, detach={self.detach}"
