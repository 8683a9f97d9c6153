"""Learning-rate factors per iteration (stepped every batch, so resume needs only the step count)."""

from __future__ import annotations

import math

from ..recipes import LRSchedule


def lr_factor(sched: LRSchedule, epoch: float, epochs: int) -> float:
    """Multiplier of the base lr at fractional ``epoch`` (0 <= epoch < epochs)."""
    if sched.name == "multistep":
        f = sched.gamma ** sum(1 for m in sched.milestones if math.floor(epoch) >= m)
    elif sched.name == "onecycle":
        t = epoch / epochs
        f = t / sched.pct_start if t < sched.pct_start else max(0.0, (1 - t) / (1 - sched.pct_start))
    elif sched.name == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    else:
        f = 1.0
    if sched.warmup_epochs > 0 and epoch < sched.warmup_epochs:
        f *= epoch / sched.warmup_epochs
    return f
