"""The official AutoAttack (Croce & Hein 2020, the registry package ``pyautoattack``) on againzoo models.

``run_autoattack`` runs ``AutoAttack(version="standard")``: APGD-CE, APGD-T (9 targets), FAB-T
(9 targets) and Square (5,000 queries), exactly as RobustBench does, on a model in eval mode and
fp32, and returns the per-example robustness, the robust accuracy after each attack and the
package's own soundness checks as flags. Models with a non-differentiable gate (AGAIN's ASE argmax,
or anything exposing ``gate_mode``) can be attacked with the straight-through gate
(``gate="straight_through"``: hard forward, softmax-weighted backward), which the package cannot
do by itself; the caller takes the per-example worst case of both runs.

``budget`` lowers the iteration/query counts for tests only; any result run with it says so.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from .errors import UsageError

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
GATES = ("hard", "straight_through")
# pyautoattack's check messages (checks.py), matched to a check name each
CHECKS = {
    "randomized": "randomized defense",
    "range_output": "probability distribution",
    "dynamic": "dynamic defense",
    "n_classes": "target classes",
    "zero_gradients": "zero gradient",
    "square_success": "Square Attack has decreased",
}
_AFTER = re.compile(r"robust accuracy after ([A-Z-]+): ([0-9.]+)%")


def package_version() -> str:
    import pyautoattack

    return getattr(pyautoattack, "__version__", "unknown")


@dataclass
class AutoAttackRun:
    """One official AutoAttack run."""

    gate: str
    robust: torch.Tensor  # bool per example: correct before and after the attack
    x_adv: torch.Tensor | None  # None where a resumable evaluation kept only the per-example results
    after_attack: dict[str, float]  # robust accuracy after each attack, as pyautoattack logs it (2 decimals)
    warnings: dict[str, str] = field(default_factory=dict)  # check name -> the package's message
    seconds: float = 0.0
    max_perturbation: float = 0.0
    attacks: tuple[str, ...] = ATTACKS  # the official attacks that ran

    @property
    def acc(self) -> float:
        return int(self.robust.sum()) / len(self.robust) if len(self.robust) else 0.0


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Collect pyautoattack's log lines and warnings instead of printing them."""
    logger = logging.getLogger("auto-attack")
    handler, level, propagate = _Collect(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    messages = handler.messages
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _set_iterations(apgd: Any, n_iter: int) -> None:
    """APGD derives its step-size checkpoints from n_iter in __init__: keep them consistent."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def make_adversary(model: nn.Module, eps: float, norm: str, seed: int, device: torch.device,
                   budget: dict[str, int] | None = None, attacks: tuple[str, ...] = ATTACKS) -> Any:
    """``pyautoattack.AutoAttack(version="standard")``, optionally with reduced budgets (tests) or a
    subset of its attacks (in the standard order, with the standard settings: the ``quick`` suite's
    official APGD-CE + APGD-T)."""
    from pyautoattack import AutoAttack

    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise UsageError(f"AutoAttack attacks must be a non-empty subset of {', '.join(ATTACKS)}, got {list(attacks)}")
    aa = AutoAttack(model, norm=norm, eps=eps, seed=seed, version="standard", device=device)
    aa.attacks_to_run = [a for a in ATTACKS if a in attacks]
    if budget:
        unknown = set(budget) - {"n_iter", "n_targets", "n_queries"}
        if unknown:
            raise UsageError(f"unknown AutoAttack budget keys {sorted(unknown)}; allowed: n_iter, n_targets, n_queries")
        if "n_iter" in budget:
            _set_iterations(aa.apgd, budget["n_iter"])
            _set_iterations(aa.apgd_targeted, budget["n_iter"])
            aa.fab.n_iter = budget["n_iter"]
        if "n_targets" in budget:
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = budget["n_targets"]
        if "n_queries" in budget:
            aa.square.n_queries = budget["n_queries"]
    return aa


def gate_context(model: nn.Module, gate: str) -> contextlib.AbstractContextManager:
    if gate not in GATES:
        raise UsageError(f"gate must be one of {GATES}, got {gate!r}")
    if gate == "straight_through":
        if not hasattr(model, "gate_mode"):
            raise UsageError(f"{type(model).__name__} has no gate_mode(); the straight-through run needs one")
        return model.gate_mode("straight_through")
    return contextlib.nullcontext()


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
                   gate: str = "hard", batch_size: int = 250, seed: int = 0,
                   budget: dict[str, int] | None = None, attacks: tuple[str, ...] = ATTACKS) -> AutoAttackRun:
    """Official standard AutoAttack on ``(x, y)`` (float [0, 1] NCHW on the model's device);
    ``attacks`` runs a subset of it."""
    model.eval()
    t0 = time.time()
    x = x.contiguous()  # pyautoattack .view()s gradients shaped like x
    aa = make_adversary(model, eps, norm, seed, x.device, budget, attacks)
    with _captured() as messages, gate_context(model, gate):
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    with torch.no_grad():
        robust = torch.cat([(model(x_adv[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).cpu()
                            for i in range(0, len(y), batch_size)]) if len(y) else torch.zeros(0, dtype=torch.bool)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    after = {m.group(1).lower(): round(float(m.group(2)) / 100, 6) for m in map(_AFTER.search, messages) if m}
    found = {name: msg for name, key in CHECKS.items() for msg in messages if key in msg}
    return AutoAttackRun(gate, robust, x_adv.detach(), after, found, time.time() - t0,
                         float(size.max()) if len(size) else 0.0, tuple(aa.attacks_to_run))


def merge(runs: list[AutoAttackRun]) -> AutoAttackRun:
    """One run from runs on consecutive slices of the images (a resumable evaluation runs AutoAttack a
    slice at a time): per-example results concatenated, the accuracy after each attack weighted by
    the slices' sizes (an attack a slice skipped, having nothing left to attack, leaves it at 0), the
    package's warnings of any slice kept."""
    sizes = [len(r.robust) for r in runs]
    total = sum(sizes)
    names = [a for a in (*ATTACKS, *(a for r in runs for a in r.after_attack)) if any(a in r.after_attack for r in runs)]
    after = {a: round(sum(r.after_attack.get(a, 0.0) * k for r, k in zip(runs, sizes)) / total, 6) if total else 0.0
             for a in dict.fromkeys(names)}
    found: dict[str, str] = {}
    for r in runs:
        for name, msg in r.warnings.items():
            found.setdefault(name, msg)
    x_adv = None if any(r.x_adv is None for r in runs) else torch.cat([r.x_adv for r in runs])
    return AutoAttackRun(runs[0].gate, torch.cat([r.robust for r in runs]), x_adv, after,
                         found, sum(r.seconds for r in runs), max(r.max_perturbation for r in runs), runs[0].attacks)


def square_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, queries: int,
                 seed: int, batch_size: int) -> torch.Tensor:
    """Per-example correctness after the official Square Attack alone, with ``queries`` queries (the
    soundness checks' short black-box reference)."""
    from pyautoattack.square import SquareAttack

    sq = SquareAttack(model, p_init=0.8, n_queries=queries, eps=eps, norm=norm, n_restarts=1, seed=seed,
                      verbose=False, device=x.device, resc_schedule=False)
    out = torch.zeros(len(y), dtype=torch.bool)
    for i in range(0, len(y), batch_size):
        adv = sq.perturb(x[i:i + batch_size], y[i:i + batch_size])
        with torch.no_grad():
            out[i:i + batch_size] = (model(adv).argmax(1) == y[i:i + batch_size]).cpu()
    return out


def flags(runs: list[AutoAttackRun], eps: float) -> list[dict[str, Any]]:
    """pyautoattack's own checks (checks.py) as eval.json flags, one per check and run."""
    out = []
    for r in runs:
        for name in CHECKS:
            msg = r.warnings.get(name)
            out.append({"check": f"autoattack_{name}", "passed": msg is None,
                        "detail": f"[{r.gate} gate] " + (msg or "pyautoattack raised no warning")})
        out.append({"check": "autoattack_within_eps", "passed": r.max_perturbation <= eps + 1e-6,
                    "detail": f"[{r.gate} gate] largest perturbation {r.max_perturbation:.6f} (eps {eps:.6f})"})
    return out
