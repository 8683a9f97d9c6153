"""Robustness evaluation: attack suites, per-example worst case, soundness checks, eval.json.

Suites (L-inf or L2, budget ``eps``):

* ``quick``: APGD-CE and APGD-T (DLR, 9 targets) in every mode the model supports (``standard``,
  and for gated models the adaptive ``joint`` / ``st`` objectives), the gate-targeted attack, and
  the official AutoAttack's APGD-CE and APGD-T (pyautoattack, standard settings; hard and
  straight-through gate for gated models) with the same budgets as ours (``aa_iter``, ``n_targets``).
* ``paper``: the columns of the paper's tables: Clean, PGD-10/20/50/100, C&W-inf (PGD on the
  margin loss, 30 steps) and AA, the **official AutoAttack** (package ``pyautoattack``,
  ``version="standard"``: APGD-CE, APGD-T, FAB-T, Square). For AGAIN models the PGD and C&W
  attacks use the joint loss (the paper's protocol, section 5.2.2), a non-adaptive PGD-20 on the
  main logits is added, and AA runs twice, with the hard gate and with the straight-through gate
  (the column is the per-example worst case of both).
* ``full``: ``paper`` with every PGD / C&W in every mode, our APGD-CE / APGD-T on the adaptive
  objectives (which the official code, CE/DLR only, cannot run), and the gate-targeted attack.
* ``aa``: exactly what RobustBench runs, the official standard AutoAttack and nothing else (plus
  the straight-through run for gated models, reported separately and in the worst case).

Our white-box attacks run on every clean-correct example; AutoAttack runs on all examples, as
RobustBench runs it. A column's accuracy is the per-example worst case over its variants;
``worst_case_acc`` is the per-example worst case over the whole suite. Attacks run in fp32 with the
model in eval mode; all randomness comes from seeded generators.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .version import __version__
from . import autoattack as AA
from .attacks import adaptive as A
from .attacks.apgd import apgd, apgd_targeted
from .attacks.pgd import fgsm, pgd
from .errors import ConfigError
from .eval_state import EvalState, fingerprint
from .gate_diagnostics import describe, gate_diagnostics
from .runtime import model_device, resolve_device
from .stats import to_bits

SUITES = ("quick", "paper", "full", "aa")


# -- suites ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackSpec:
    """One attack run of a suite."""

    column: str  # the result column it counts towards (PGD-20, C&W, AA, ...)
    kind: str  # fgsm | pgd | apgd_ce | apgd_t | gate | autoattack (the official package)
    mode: str = "standard"  # standard | joint | st | gate (see againzoo.attacks.adaptive)
    steps: int = 10
    loss: str = "ce"
    restarts: int = 1
    n_targets: int = 9
    label: str = ""
    aa_attacks: tuple[str, ...] = AA.ATTACKS  # kind autoattack: the official attacks that run


    @property
    def name(self) -> str:
        return self.label or self.column

    def settings(self, eps: float, norm: str) -> dict[str, Any]:
        s = {"kind": self.kind, "mode": self.mode, "eps": eps, "norm": norm}
        if self.kind in ("pgd", "gate"):
            s.update(steps=self.steps, step_size=eps / 4, loss=self.loss, restarts=self.restarts, random_start=True)
        elif self.kind == "fgsm":
            s.update(steps=1, step_size=eps, loss=self.loss)
        elif self.kind == "apgd_ce":
            s.update(n_iter=self.steps, loss="ce", restarts=self.restarts)
        elif self.kind == "apgd_t":
            s.update(n_iter=self.steps, loss="dlr_targeted", n_targets=self.n_targets)
        elif self.kind == "autoattack":
            s.update(implementation="pyautoattack (official AutoAttack, Croce & Hein 2020)", version="standard",
                     attacks=list(self.aa_attacks), gate="straight_through" if self.mode == "st" else "hard",
                     run_on="all examples (as RobustBench)")
        return s


def _named(spec: AttackSpec, multi_mode: bool) -> AttackSpec:
    label = f"{spec.column} [{spec.mode}]" if multi_mode else spec.column
    if spec.kind in ("apgd_ce", "apgd_t"):
        base = "APGD-CE" if spec.kind == "apgd_ce" else "APGD-T"
        label = f"{base} [{spec.mode}]" if multi_mode else base
    return AttackSpec(**{**asdict(spec), "label": label})


def suite_specs(suite: str, model: nn.Module, aa_iter: int = 100, n_targets: int = 9,
                pgd_steps: tuple[int, ...] = (10, 20, 50, 100), cw_steps: int = 30) -> list[AttackSpec]:
    """The attacks of ``suite`` for ``model`` (adaptive variants depend on what the model exposes).

    ``aa_iter`` / ``n_targets`` are the budgets of our APGD runs (quick and full suites); the
    official AutoAttack's budgets are its own (see :func:`evaluate`'s ``aa_budget``)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    modes = A.available_modes(model)
    white_modes = [m for m in modes if m != "gate"]
    multi = len(modes) > 1
    primary = "joint" if A.is_again(model) else "standard"
    specs: list[AttackSpec] = []

    def white(column: str, kind: str, steps: int, loss: str = "ce", which: list[str] | None = None) -> None:
        for m in which or [primary]:
            specs.append(_named(AttackSpec(column, kind, m, steps, loss, n_targets=n_targets), multi))

    def official(column: str = "AA", attacks: tuple[str, ...] = AA.ATTACKS) -> None:
        for m in ["standard", "st"] if A.has_gate(model) else ["standard"]:
            label = f"{column} [{'hard' if m == 'standard' else 'st'}]" if A.has_gate(model) else column
            specs.append(AttackSpec(column, "autoattack", m, label=label, aa_attacks=attacks))

    if suite == "quick":
        white("APGD", "apgd_ce", aa_iter, which=white_modes)
        white("APGD", "apgd_t", aa_iter, "dlr_t", which=white_modes)
        if "gate" in modes:
            specs.append(_named(AttackSpec("gate", "gate", "gate", 50), multi))
        official("official APGD", ("apgd-ce", "apgd-t"))
        return specs
    if suite == "aa":
        official()
        return specs
    variants = white_modes if suite == "full" else [primary]
    for k in pgd_steps:
        white(f"PGD-{k}", "pgd", k, which=variants)
    white("C&W", "pgd", cw_steps, "margin", which=variants)
    if suite == "paper" and A.is_again(model):  # the naive, non-adaptive reference
        specs.append(AttackSpec("PGD-20" if 20 in pgd_steps else "non-adaptive", "pgd", "standard", 20,
                                label="PGD-20 [standard]"))
    adaptive = [m for m in white_modes if m != "standard"]
    if suite == "full" and adaptive:  # APGD on the objectives the official code cannot run
        white("APGD (adaptive)", "apgd_ce", aa_iter, which=adaptive)
        white("APGD (adaptive)", "apgd_t", aa_iter, "dlr_t", which=adaptive)
    if suite == "full" and "gate" in modes:
        specs.append(_named(AttackSpec("gate", "gate", "gate", max(pgd_steps)), multi))
    official()
    return specs


def run_attack(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
               generator: torch.Generator) -> torch.Tensor:
    """Adversarial examples of one spec for one batch."""
    logits_fn = lambda z: model(z)
    with A.mode_context(model, spec.mode):
        if spec.kind == "gate":
            return A.gate_targeted(model, x, y, eps, spec.steps, eps / 4, norm, generator)
        if spec.kind == "apgd_t":
            make = lambda idx, t: A.objective(model, y[idx], "dlr_t", spec.mode, t)
            return apgd_targeted(make, logits_fn, x, y, eps, spec.steps, spec.n_targets, norm, generator)
        obj = A.objective(model, y, spec.loss, spec.mode)
        if spec.kind == "fgsm":
            return fgsm(obj, x, eps, norm, y=y)
        out = x
        alive = torch.ones(len(y), dtype=torch.bool, device=x.device)
        for _ in range(spec.restarts):
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            sub = A.objective(model, y[idx], spec.loss, spec.mode)
            if spec.kind == "apgd_ce":
                adv = apgd(sub, x[idx], y[idx], eps, spec.steps, norm, generator=generator)
            else:
                adv = pgd(sub, x[idx], eps, eps / 4, spec.steps, norm, True, generator, y=y[idx])
            out = out.clone() if out is x else out
            out[idx] = adv
            with torch.no_grad():
                alive[idx] = model(adv).argmax(1) == y[idx]
        return out


_AA_INFO = ("after_attack", "warnings", "seconds", "max_perturbation", "attacks")  # a slice's JSON fields


def _autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, gate: str,
                batch_size: int, seed: int, budget: dict[str, int] | None, attacks: tuple[str, ...],
                state: EvalState, key: str, keep_images: bool) -> AA.AutoAttackRun:
    """The official AutoAttack on ``batch_size`` images at a time (AutoAttack attacks a batch at a
    time anyway), each slice a unit of ``state``, merged into one run (its adversarial images only
    with ``keep_images``)."""
    runs = []
    for i in range(0, len(y), batch_size):
        def compute(i: int = i) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            r = AA.run_autoattack(model, x[i:i + batch_size], y[i:i + batch_size], eps, norm, gate, batch_size, seed,
                                  budget, attacks=attacks)
            kept = {"x_adv": r.x_adv} if keep_images else {}
            return {"robust": r.robust, **kept}, {f: getattr(r, f) for f in _AA_INFO}
        t, info = state.unit(f"{key}-{i // batch_size:03d}", compute)
        x_adv = t["x_adv"].to(x.device) if keep_images else None
        runs.append(AA.AutoAttackRun(gate, t["robust"], x_adv, **{**info, "attacks": tuple(info["attacks"])}))
    return AA.merge(runs)  # check_eval_args: at least one image


# -- soundness checks -------------------------------------------------------------------------

def _tol(acc: float, n: int) -> float:
    """Noise tolerance of an accuracy on n examples: 1.96 standard errors, at least half a point."""
    return max(0.005, 1.96 * math.sqrt(max(acc * (1 - acc), 1.0 / n) / max(n, 1)))


def _flag(check: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": check, "passed": bool(passed), "detail": detail}


def _batched_attack(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                    batch_size: int, gen: torch.Generator, tick: Callable[[], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example correctness after the attack (bool, on the CPU) and the adversarial examples."""
    out = torch.zeros(len(y), dtype=torch.bool)
    advs = []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = run_attack(spec, model, xb, yb, eps, norm, gen).detach()
        with torch.no_grad():
            out[i:i + batch_size] = (model(adv).argmax(1) == yb).cpu()
        advs.append(adv)
        tick()
    return out, torch.cat(advs) if advs else x[:0]


CHECK_SQUARE_QUERIES = 1000  # the soundness checks' short Square (AutoAttack's own runs 5,000)


def soundness_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, num_classes: int,
                     batch_size: int, seed: int, square_queries: int = CHECK_SQUARE_QUERIES,
                     progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The Carlini et al. 2019 / AutoAttack sanity checks, on the (clean-correct) examples ``x``,
    with non-adaptive attacks on the main logits: they diagnose what a naive evaluation sees.
    The black-box reference is the official Square Attack (pyautoattack)."""
    n = len(y)
    flags: list[dict[str, Any]] = []
    numbers: dict[str, Any] = {"n": n}
    if n == 0:
        return [_flag("examples", False, "no correctly classified examples to check")], numbers
    gen = torch.Generator(device=x.device).manual_seed(seed + 1)
    large = 0.5 if norm == "Linf" else 16.0
    scales = (0.25, 0.5, 1.0, 2.0, 4.0)
    runs = [("FGSM", AttackSpec("FGSM", "fgsm"), eps), ("PGD-10", AttackSpec("PGD-10", "pgd", steps=10), eps),
            ("PGD-50", AttackSpec("PGD-50", "pgd", steps=50), eps)]
    runs += [(f"PGD-20@{s:g}eps", AttackSpec("PGD-20", "pgd", steps=20), s * eps) for s in scales]
    runs += [("PGD-20@large", AttackSpec("PGD-20", "pgd", steps=20), large)]
    bar = tqdm(total=len(runs) * math.ceil(n / batch_size), desc="soundness checks", disable=None if progress else True, leave=False)
    acc: dict[str, float] = {}
    ok_all = torch.ones(n, dtype=torch.bool, device=x.device)
    for name, spec, e in runs:
        ok = _batched_attack(model, spec, x, y, e, norm, batch_size, gen, lambda: bar.update(1))[0]
        acc[name] = float(ok.float().mean())
        if e == eps:
            ok_all &= ok.to(x.device)
    bar.close()
    numbers["accuracy"] = acc

    sweep = [acc[f"PGD-20@{s:g}eps"] for s in scales] + [acc["PGD-20@large"]]
    worst_rise = max(b - a for a, b in zip(sweep, sweep[1:]))
    flags.append(_flag("accuracy_decreases_with_eps", worst_rise <= _tol(max(sweep), n),
                       f"PGD-20 accuracy at eps x {list(scales)} and {large}: {[round(v, 4) for v in sweep]}"))
    chance = 1.0 / num_classes
    flags.append(_flag("chance_at_large_eps", acc["PGD-20@large"] <= chance + _tol(chance, n),
                       f"PGD-20 at eps={large}: {acc['PGD-20@large']:.4f} (chance {chance:.4f})"))
    flags.append(_flag("more_steps_do_not_help", acc["PGD-50"] <= acc["PGD-10"] + _tol(acc["PGD-10"], n),
                       f"PGD-10 {acc['PGD-10']:.4f} vs PGD-50 {acc['PGD-50']:.4f}"))
    flags.append(_flag("iterative_beats_single_step", acc["PGD-10"] <= acc["FGSM"] + _tol(acc["FGSM"], n),
                       f"FGSM {acc['FGSM']:.4f} vs PGD-10 {acc['PGD-10']:.4f}"))

    # a short Square on what the non-adaptive white-box attacks left
    idx = ok_all.nonzero().squeeze(1)
    fooled = 0
    if idx.numel():
        fooled = int((~AA.square_correct(model, x[idx], y[idx], eps, norm, square_queries, seed, batch_size)).sum())
    numbers.update(square_queries=square_queries, square_gain=fooled / n)
    flags.append(_flag("whitebox_beats_square", fooled / n <= 0.005,
                       f"Square ({square_queries} queries, pyautoattack) fooled {100 * fooled / n:.2f}% of the examples "
                       "that FGSM/PGD on the main logits missed (flagged above 0.5 points)"))

    xg = x[:batch_size].clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xg), y[:batch_size], reduction="sum")
        g = torch.autograd.grad(loss, xg)[0]
    zero = float((g.flatten(1).abs().amax(1) == 0).float().mean())
    numbers["zero_gradient_fraction"] = zero
    flags.append(_flag("no_zero_gradients", zero <= 0.01,
                       f"{100 * zero:.1f}% of examples have an exactly zero input gradient of the CE loss"))
    with torch.no_grad():
        a, b = model(x[:batch_size]), model(x[:batch_size])
    flags.append(_flag("deterministic_logits", torch.equal(a, b), "two forward passes of the same batch are "
                       + ("identical" if torch.equal(a, b) else f"different (max diff {float((a - b).abs().max()):.2e})")))
    training = [n for n, m in model.named_modules() if m.training]
    flags.append(_flag("eval_mode", not training, "all modules in eval mode" if not training
                       else f"modules in training mode: {training[:5]}"))
    return flags, numbers


# -- the evaluation --------------------------------------------------------------------------

def check_budget(eps: float, norm: str) -> None:
    """One-line errors for a threat model that does not exist."""
    if norm not in ("Linf", "L2"):
        raise ConfigError(f"norm must be Linf or L2, got {norm!r}")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0
            and (norm == "L2" or eps <= 1)):
        raise ConfigError(f"eps must be in (0, 1] for Linf (images are in [0, 1]) or > 0 for L2, got {eps!r}")


def check_eval_args(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, batch_size: int, num_classes: int) -> None:
    """One-line errors for an evaluation that could only return nonsense."""
    check_budget(eps, norm)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if len(y) == 0 or x.shape[0] != len(y):
        raise ConfigError(f"expected a non-empty batch with one label per image, got {tuple(x.shape)} images and "
                          f"{len(y)} labels")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ConfigError(f"labels must be integer classes, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes and hi >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes or '?'}), got values in [{lo}, {hi}]")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise ConfigError("images must be finite floats in [0, 1] (divide uint8 pixels by 255)")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: str = "quick", eps: float = 8 / 255,
             norm: str = "Linf", batch_size: int = 256, seed: int = 0, n_check: int = 200, checks: bool = True,
             progress: bool = True, data: dict[str, Any] | None = None, reference: dict[str, Any] | None = None,
             aa_budget: dict[str, int] | None = None, state_dir: str | Path | None = None,
             **suite_kw: Any) -> dict[str, Any]:
    """Run ``suite`` on ``(x, y)`` (float [0, 1] NCHW, int labels); returns the eval.json dict.

    ``state_dir``: keep each finished attack (and each slice of ``batch_size`` images of an official
    AutoAttack run) there; called again after an interruption, the evaluation reloads them and
    computes only the rest, with the result of an uninterrupted run (:mod:`againzoo.eval_state`).

    ``suite_kw`` tunes the budgets of our attacks (``aa_iter``, ``n_targets``, ``pgd_steps``,
    ``cw_steps``) and ``aa_budget`` (``n_iter``, ``n_targets``, ``n_queries``) the official
    AutoAttack's, for quick runs; the defaults are the standard ones, and a result run with a
    reduced AutoAttack budget says so in ``autoattack.budget`` (its ``n_queries`` also caps the
    soundness checks' Square, recorded in ``checks.square_queries``).
    """
    t0 = time.time()
    check_eval_args(x, y, eps, norm, batch_size, int(getattr(model, "num_classes", 0) or 0))
    if suite == "quick":  # its official APGD runs and ours share one budget (either way of giving it)
        if aa_budget is None:
            budget = {"n_iter": suite_kw.get("aa_iter", 100), "n_targets": suite_kw.get("n_targets", 9)}
            aa_budget = None if budget == {"n_iter": 100, "n_targets": 9} else budget
        else:
            suite_kw.setdefault("aa_iter", aa_budget.get("n_iter", 100))
            suite_kw.setdefault("n_targets", aa_budget.get("n_targets", 9))
    model.eval()
    dev = model_device(model)
    num_classes = int(getattr(model, "num_classes", 0)) or None
    x, y = x.to(dev).float(), y.to(dev).long()
    specs = suite_specs(suite, model, **suite_kw)
    state = EvalState(state_dir, "" if state_dir is None else fingerprint(
        model, x, y, {"suite": suite, "eps": eps, "norm": norm, "batch_size": batch_size, "seed": seed,
                      "n_check": n_check, "checks": checks, "aa_budget": aa_budget, "suite_kw": suite_kw,
                      "version": __version__}))
    with torch.no_grad():
        clean_ok = torch.cat([(model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).cpu()
                              for i in range(0, len(y), batch_size)])
    idx = clean_ok.nonzero().squeeze(1).to(dev)
    xc, yc = x[idx], y[idx]
    n = len(y)
    batches = math.ceil(len(idx) / batch_size) if len(idx) else 0
    bar = tqdm(total=len(specs) * batches, desc=f"{suite} suite", disable=None if progress else True)
    correct: dict[str, torch.Tensor] = {}
    attacks: dict[str, Any] = {}
    aa_runs: list[AA.AutoAttackRun] = []
    # per clean-correct example: the adversarial example of the first attack that fooled it (else the
    # first attack's), i.e. the suite's worst case, for the gate diagnostics. Only they read adversarial
    # images, so only then does the state keep them; else a unit is per-example bits, small enough to
    # travel with the published weights (``againzoo zoo build``)
    keep_images = A.is_again(model)
    worst_x: torch.Tensor | None = None
    fooled = torch.zeros(len(idx), dtype=torch.bool)
    for k, spec in enumerate(specs):
        settings = spec.settings(eps, norm)
        key = f"{k:02d}-{spec.name}"
        if spec.kind == "autoattack":
            run = _autoattack(model, x, y, eps, norm, settings["gate"], batch_size, seed, aa_budget, spec.aa_attacks,
                              state, key, keep_images)
            aa_runs.append(run)
            ok, adv = run.robust[idx.cpu()], (run.x_adv[idx] if keep_images else None)
            settings.update(after_attack=run.after_attack, seconds=round(run.seconds, 2))
            bar.update(batches)
        else:
            # each attack draws from its own generator: a resumed suite draws what an uninterrupted one does
            gen = torch.Generator(device=dev).manual_seed(seed + k)
            if state.done(key):
                bar.update(batches)

            def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
                ok, adv = _batched_attack(model, spec, xc, yc, eps, norm, batch_size, gen, lambda: bar.update(1))
                return ({"ok": ok, "adv": adv} if keep_images else {"ok": ok}), {}
            done, _ = state.unit(key, compute)
            ok, adv = done["ok"], (done["adv"].to(dev) if keep_images else None)
        if adv is not None:
            if worst_x is None:
                worst_x = adv.clone()
            new = ~ok & ~fooled
            if new.any():
                worst_x[new.to(worst_x.device)] = adv[new.to(adv.device)].to(worst_x.device)
            fooled |= ~ok
        correct[spec.name] = ok
        attacks[spec.name] = {"acc": float(ok.sum()) / n, "column": spec.column, "settings": settings}
    bar.close()

    def worst(names: list[str]) -> float:
        ok = torch.ones(len(idx), dtype=torch.bool)
        for k in names:
            ok &= correct[k]
        return float(ok.sum()) / n

    columns: dict[str, float] = {"Clean": float(clean_ok.sum()) / n}
    for spec in specs:
        columns.setdefault(spec.column, worst([s.name for s in specs if s.column == spec.column]))
    worst_case = worst(list(correct))
    robust = torch.zeros(n, dtype=torch.bool)
    survived = torch.ones(len(idx), dtype=torch.bool)
    for ok in correct.values():
        survived &= ok
    robust[idx.cpu()] = survived
    result: dict[str, Any] = {
        "data": data or {"n": n},
        "eps": eps,
        "norm": norm,
        "suite": suite,
        "clean_acc": columns["Clean"],
        "attacks": attacks,
        "columns": columns,
        "worst_case_acc": worst_case,
        # per image, in order: correct clean / after every attack of the suite (paired comparisons of
        # models evaluated on the same images, e.g. benchmarks/again_study.py's intervals)
        "per_example": {"clean": to_bits(clean_ok), "worst_case": to_bits(robust)},
    }
    if A.is_again(model) or A.has_gate(model):
        naive = [s.name for s in specs if s.mode == "standard"]
        if naive:
            result["non_adaptive_acc"] = worst(naive)
            result["adaptive_gap"] = result["non_adaptive_acc"] - worst_case
    flags: list[dict[str, Any]] = []
    if "adaptive_gap" in result:
        gap = result["adaptive_gap"]
        flags.append(_flag("adaptive_gap", gap <= 0.01, f"non-adaptive attacks (main logits only) leave "
                           f"{100 * result['non_adaptive_acc']:.2f}%, the adaptive suite {100 * worst_case:.2f}%: "
                           f"a naive evaluation overstates robustness by {100 * gap:.2f} points"))
    flags += AA.flags(aa_runs, eps)
    check_numbers: dict[str, Any] = {}
    if checks:
        k = min(n_check, len(idx))
        # a reduced official budget (quick checks) reduces the checks' Square too; eval.json records it
        square = min(CHECK_SQUARE_QUERIES, (aa_budget or {}).get("n_queries", CHECK_SQUARE_QUERIES))
        _, done = state.unit("checks", lambda: ({}, dict(zip(("flags", "numbers"), soundness_checks(
            model, xc[:k], yc[:k], eps, norm, num_classes or int(y.max()) + 1, batch_size, seed, progress=progress,
            square_queries=square)))))
        flags += done["flags"]
        check_numbers = done["numbers"]
    if A.is_again(model):
        result["gate"] = gate_diagnostics(model, x, y, worst_x, yc, batch_size, seed)
        result["gate"]["adversarial_examples"] = (f"the {suite} suite's per-example worst case on the {len(idx)} "
                                                  f"clean-correct of {n} images")
        flags.append(_flag("gate_shortcut", not result["gate"]["gate_shortcut"], describe(result["gate"])))
    result["flags"] = flags
    result["checks"] = check_numbers
    result["masking_suspected"] = any(not f["passed"] for f in flags if f["check"] in MASKING_CHECKS)
    result["autoattack"] = None if not aa_runs else {
        "package": "pyautoattack", "version": AA.package_version(), "version_name": "standard",
        "attacks": list(aa_runs[0].attacks), "complete": list(aa_runs[0].attacks) == list(AA.ATTACKS),
        "budget": aa_budget or "standard",
        "runs": {r.gate: {"acc": r.acc, "after_attack": r.after_attack, "seconds": round(r.seconds, 2)}
                 for r in aa_runs},
        "column": "per-example worst case of the runs" if len(aa_runs) > 1 else "the run"}
    result["reference"] = reference
    seconds = time.time() - t0
    result["runtime"] = {"seconds": round(seconds, 2), **state.cost(seconds), "device": str(dev),
                         "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
                         "precision": "fp32", "seed": seed, "batch_size": batch_size,
                         "againzoo_version": __version__, "torch": torch.__version__,
                         "date": time.strftime("%Y-%m-%d")}
    return result


MASKING_CHECKS = ("chance_at_large_eps", "more_steps_do_not_help", "iterative_beats_single_step",
                  "whitebox_beats_square", "no_zero_gradients", "adaptive_gap", "accuracy_decreases_with_eps",
                  "autoattack_square_success", "autoattack_zero_gradients", "autoattack_randomized")


def markdown_table(result: dict[str, Any]) -> str:
    """The result's columns (the paper's, for the paper suite), the worst case, and reference numbers."""
    cols = list(result["columns"])  # Clean, then in the order the suite ran them
    head = "| | " + " | ".join(cols) + " | Worst case |"
    sep = "|---" * (len(cols) + 2) + "|"
    ours = "| againzoo (measured) | " + " | ".join(f"{100 * result['columns'][c]:.2f}" for c in cols) + \
        f" | **{100 * result['worst_case_acc']:.2f}** |"
    lines = [head, sep, ours]
    ref = result.get("reference")
    if ref:
        nums = ref["numbers"]
        lines.append("| paper (reference) | " + " | ".join(f"{nums[c]:.2f}" if c in nums else "-" for c in cols) + " | - |")
    return "\n".join(lines)


ROBUSTBENCH = "robustbench.json"


def evaluate_checkpoint(source: str, suite: str = "quick", data_dir: str | None = None, n_examples: int = 1000,
                        eps: float | None = None, split: str | None = None, device: str | None = None,
                        batch_size: int = 256, which: str = "best", progress: bool = True, write: bool = True,
                        output: str | Path | None = None, overwrite: bool = False,
                        **kw: Any) -> tuple[dict[str, Any], Path]:
    """Evaluate a run directory (``best/`` by default) or a Hub model and write ``eval.json``
    beside its weights (or to ``output``; ``robustbench.json`` beside it when the suite ran the
    official AutoAttack). An existing ``output`` that is not an eval record is not replaced unless
    ``overwrite``. Returns ``(result, weights directory)``."""
    import json

    from .checkpoint import CONFIG, WEIGHTS
    from .integrity import WEIGHTS_KEY, sha256_of
    from .pretrained import from_pretrained
    from .io import atomic_write_json, check_replace
    from .references import reference_for
    from .robustbench import record as robustbench_record

    if n_examples < 1:
        raise ConfigError(f"n_examples must be >= 1, got {n_examples}")
    if eps is not None:  # a wrong budget is named before any model or data is loaded
        check_budget(eps, kw.get("norm", "Linf"))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if output is not None and write:
        check_replace(output, lambda p: "worst_case_acc" in json.loads(p.read_text()), "an eval.json", overwrite)
    path = Path(source)
    if path.is_dir() and which == "best" and (path / "best" / CONFIG).exists():
        path = path / "best"
    dev = resolve_device(device)
    model, wdir = from_pretrained(str(path) if path.exists() else source, device=dev, return_dir=True)
    config = json.loads((wdir / CONFIG).read_text())
    recipe = config.get("recipe") or {}
    if eps is None:
        eps = float((recipe.get("attack") or {}).get("eps", 8 / 255))
    x, yy, data = eval_data(config, data_dir, split, n_examples)
    ref = reference_for(recipe.get("name")) if suite == "paper" and abs(eps - 8 / 255) < 1e-9 else None
    kw.setdefault("checks", suite != "aa")  # the aa suite is RobustBench's protocol and nothing else
    result = evaluate(model, x, yy, suite, eps, batch_size=batch_size, progress=progress, data=data,
                      reference=ref, **kw)
    result["model"] = {"source": str(source), "weights": str(wdir), "architecture": config.get("architecture"),
                       "again": config.get("again"), "recipe": recipe.get("name"), "epoch": config.get("epoch")}
    digest = sha256_of(wdir / WEIGHTS)  # the record names the exact file it measured
    result[WEIGHTS_KEY] = digest
    if write:
        target = Path(output) if output is not None else wdir / "eval.json"
        atomic_write_json(target, result)
        if "AA" in result["columns"] and result.get("autoattack"):
            atomic_write_json(target.parent / ROBUSTBENCH, {**robustbench_record(result, config), WEIGHTS_KEY: digest})
    return result, wdir


def eval_data(config: dict[str, Any], data_dir: str | None = None, split: str | None = None,
              n: int = 1000) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The first ``n`` test images of a checkpoint's dataset, as float [0, 1] NCHW, labels and a
    description. CIFAR-10 defaults to the lossless 1,000-image subset when it is available and
    ``n`` fits in it (RobustBench's n_ex=1000), else to the full test set."""
    from .data import load_dataset
    from .errors import DataError

    data = (config.get("recipe") or {}).get("data") or {}
    dataset = data.get("dataset", "cifar10")
    data_dir = data_dir or data.get("data_dir")
    if split is None:
        split = "test"
        if dataset == "cifar10" and n <= 1000:
            try:
                load_dataset(dataset, "test_lossless", data_dir)
                split = "test_lossless"
            except DataError:
                pass
    ds = load_dataset(dataset, split, data_dir)
    n = min(n, len(ds))
    x = torch.from_numpy(ds.x[:n]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(ds.y[:n]), {**ds.describe(), "n": n, "evaluated": f"first {n} images of {dataset}/{split}"}
