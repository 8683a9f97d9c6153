"""Per-example attack losses on logits (larger = more adversarial).

* ``ce``: cross-entropy.
* ``margin``: C&W's margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017).
* ``dlr``: Difference of Logits Ratio, ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``
  (Croce & Hein 2020, Eq. 6); shift- and scale-invariant.
* ``dlr_targeted``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (Croce & Hein 2020, Eq. 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.scatter(1, y[:, None], float("-inf")).amax(1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    top = logits.sort(1, descending=True)[0]
    return -(logits.gather(1, y[:, None]).squeeze(1) - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    top = logits.sort(1, descending=True)[0]
    zy, zt = logits.gather(1, y[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def ce_targeted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Larger when ``logits`` move towards ``target``."""
    return -F.cross_entropy(logits.float(), target, reduction="none")
