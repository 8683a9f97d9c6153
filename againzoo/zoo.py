"""The zoo build: train the zoo recipes, publish fp16 weights, evaluate exactly those weights, register them.

For each entry (a zoo id such as ``again_resnet18`` and its recipe), :func:`build`:

1. **sizes** the work: it measures each recipe's training throughput (the trainer's own step) and
   the fp32 pass rate of the evaluation and, under a time budget, gives every entry the same number
   of epochs so that all trainings and evaluations fit, or skips entries and says why;
2. **trains** the recipe (a run directory under ``work_dir``);
3. **publishes** the selected checkpoint (``best/``: chosen on the held-out slice, the weight
   average when the recipe has EMA) as ``zoo/<id>/model.safetensors`` in fp16 (``zoo/<id>-<dataset>``
   for a dataset other than CIFAR-10) (floating tensors in
   float16, integer buffers unchanged), with its ``config.json`` (plus a ``published`` section) and
   the run's ``metrics.jsonl``;
4. **evaluates** ``zoo/<id>`` itself, i.e. the fp16 file upcast to fp32 on load, with the
   ``paper`` suite (official AutoAttack with the hard and the straight-through gate) on the
   lossless CIFAR-10 test images: ``eval.json`` and ``robustbench.json`` land beside the weights;
5. **registers** the file (sha256, metrics, local path) in the registry and regenerates
   ``MODEL_CARD.md`` over every ``zoo/`` entry.

``manifest.json`` (in ``work_dir``) lists what was built, re-sized or skipped, the throughput,
the timings and every produced file with its sha256. With ``parts_dir``, :func:`pack` writes each
finished entry as a tar split into parts of at most ``split_mb`` MiB, with an index of sha256
digests; :func:`join` checks and reassembles them (the way a GPU machine's results come back in
parts of 16 MiB).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import recipes as recipes_mod
from .card import NOTES, zoo_card
from .errors import CheckpointError, ConfigError
from .evaluation import evaluate_checkpoint
from .checkpoint import CONFIG, WEIGHTS, sha256_of, write_pair
from .cpu import cpu_name
from .integrity import WEIGHTS_KEY
from .io import atomic_write_json, atomic_write_text, load_tensors, read_jsonl, replace_dir
from .registry import PretrainedEntry, register
from .registry import entries as registry_entries, path as registry_path
from .training.overfitting import run_collapse

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ZooEntry:
    """A published model: its id (the registry's model name and the ``zoo/`` folder) and recipe; a
    model whose id is not its architecture's name says which timm entry and pretrained tag it is."""

    id: str
    recipe: str
    overrides: tuple[str, ...] = ()
    arch: str | None = None  # the timm entry (resnet18_cifar, again_resnet18); None: the id
    tag: str | None = None  # the timm pretrained tag; None: the dataset


ENTRIES = {
    "again_resnet18": ZooEntry("again_resnet18", "cifar10_resnet18_again_pgd_at_zoo"),
    "resnet18_cifar": ZooEntry("resnet18_cifar", "cifar10_resnet18_pgd_at_zoo"),
    # the CPU tier: width-16 ResNet-18s trained in bf16 on two CPU cores (the twin first)
    "resnet18_cifar_w16_cpu": ZooEntry("resnet18_cifar_w16_cpu", "cifar10_resnet18w16_cpu",
                                       arch="resnet18_cifar", tag="w16_cpu_cifar10"),
    "again_resnet18_w16_cpu": ZooEntry("again_resnet18_w16_cpu", "cifar10_resnet18w16_again_cpu",
                                       arch="again_resnet18", tag="w16_cpu_cifar10"),
    # the CPU tier's wider twin (width 32: larger margins for its int8 export, 3x the cost per image)
    "resnet18_cifar_w32_cpu": ZooEntry("resnet18_cifar_w32_cpu", "cifar10_resnet18w32_cpu",
                                       arch="resnet18_cifar", tag="w32_cpu_cifar10"),
}
# a tier: the entries built together, with the same epochs, and each one's training budget (minutes)
TIERS = {"gpu": (("resnet18_cifar", "again_resnet18"), None),
         "cpu": (("resnet18_cifar_w16_cpu", "again_resnet18_w16_cpu"), 60.0)}
BUILD = "build.json"  # zoo/<id>/build.json: how the published weights were made, and how far the build got
EVAL_STATE = "eval_state"  # zoo/<id>/eval_state/: a plain model's unfinished evaluation (per-example results)
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1_497}
# Forward-backward passes per evaluated image of the paper suite (n images, ~80% clean-correct,
# ~45% robust): our PGD-10/20/50/100, C&W-30 and non-adaptive PGD-20 on the clean-correct images plus
# the soundness checks (~250); per official AutoAttack run (APGD-CE 100 on the clean-correct, APGD-T
# and FAB-T 9 targets x 100 on the still-robust, ~2 passes per FAB step, Square 5,000 forward-only
# queries ~ 1/3 pass each): ~2,400. Gated models run AutoAttack twice (hard and straight-through gate).
# The fp32 pass rate is measured on the device; ``EVAL_MARGIN`` covers the small-batch tail of AA.
# Calibration (H100, 2026-11-27, again_resnet18 at 43% clean / 28% robust): 19,770 fp32 passes/s
# measured, 255 s estimated without margin, 237 s taken. (A margin of 1.5 there dropped the second
# entry for want of 30 s.)
EVAL_PASSES_OURS, EVAL_PASSES_PER_AA = 250, 2_400
EVAL_MARGIN = 1.1


@dataclass
class Plan:
    entry: ZooEntry
    recipe: recipes_mod.Recipe  # as loaded with the entry's and the caller's overrides (epochs not yet re-sized)
    epochs: int
    recipe_epochs: int
    images_per_s: float | None = None
    eval_passes_per_s: float | None = None
    epoch_s_est: float | None = None
    train_s_est: float | None = None
    eval_s_est: float | None = None
    skipped: str | None = None
    overrides: list[str] = field(default_factory=list)


def _measure(recipe: recipes_mod.Recipe, device: str | None, eval_batch: int) -> tuple[float, float]:
    """(training images/s of the recipe's step, fp32 forward-backward passes/s at the evaluation batch)."""
    from .training.throughput import measure

    px = 16 if recipe.data.dataset == "digits" else 32
    # on a CPU the first bf16 steps create oneDNN's kernels: two warm-up steps, four timed (one and two
    # measured the CPU tier's step at half its rate)
    steps, warmup = (5, 2) if (device or "").startswith("cuda") else (4, 2)
    train_rate = measure(recipe, device, (3, px, px), steps=steps, warmup=warmup)["images_per_s"]
    # the evaluation's attacks: fp32, contiguous, a forward-backward pass per step, no weight average
    plain = recipe.model_copy(update={"precision": "fp32", "channels_last": False, "ema": None,
                                      "batch_size": eval_batch,
                                      "method": recipe.method.model_copy(update={"name": "standard", "awp": None})})
    eval_rate = measure(plain, device, (3, px, px), steps=steps, warmup=warmup)["images_per_s"]
    return train_rate, eval_rate


def plan(entries: list[ZooEntry], seconds: float | None, n_eval: int, device: str | None, overrides: list[str],
         eval_batch: int = 256, train_seconds: float | None = None, epochs: int | None = None) -> list[Plan]:
    """Size every entry from measured throughputs so that all of them train for the **same** number of
    epochs (a fair comparison) and, with their evaluations, fit in ``seconds`` (None: no budget), and
    each training fits in ``train_seconds`` (None: no limit). Entries that cannot get one epoch each
    are dropped from the end, with the reason. ``epochs``: already decided (a resumed build), nothing
    is measured."""
    plans = []
    for entry in entries:
        recipe = recipes_mod.load(entry.recipe, [*entry.overrides, *overrides])
        plans.append(Plan(entry, recipe, recipe.epochs, recipe.epochs, overrides=[*entry.overrides, *overrides]))
    if epochs is not None or (seconds is None and train_seconds is None):
        for p in plans:
            p.epochs = min(epochs or p.recipe_epochs, p.recipe_epochs)
            if p.epochs < p.recipe_epochs:
                p.overrides.append(f"epochs={p.epochs}")
        return plans
    seconds = math.inf if seconds is None else seconds
    for p in plans:
        r = p.recipe
        p.images_per_s, p.eval_passes_per_s = _measure(r, device, eval_batch)
        e = r.eval
        # per-epoch monitoring: PGD-(attack_steps) + clean pass on three slices, twice with EMA on
        monitor_passes = (e.n_val + e.n_test + e.n_train) * (e.attack_steps + 1) * (2 if r.ema else 1) / e.every
        n_train = TRAIN_IMAGES[r.data.dataset] - r.data.val_size
        p.epoch_s_est = n_train / p.images_per_s + monitor_passes / p.eval_passes_per_s
        gates = 2 if r.model.again.enabled else 1
        p.eval_s_est = EVAL_MARGIN * n_eval * (EVAL_PASSES_OURS + gates * EVAL_PASSES_PER_AA) / p.eval_passes_per_s
    live = list(plans)
    while live:
        fit = (seconds - sum(p.eval_s_est for p in live)) / sum(p.epoch_s_est for p in live)
        if train_seconds is not None:
            fit = min(fit, train_seconds / max(p.epoch_s_est for p in live))
        fit = math.floor(fit) if math.isfinite(fit) else max(p.recipe_epochs for p in live)
        if fit >= 1:
            break
        dropped = live.pop()
        dropped.skipped = (f"not even one epoch fits for {len(live) + 1} entries: {seconds:.0f} s, one epoch "
                           f"~{dropped.epoch_s_est:.0f} s at {dropped.images_per_s:.0f} img/s, evaluation "
                           f"~{dropped.eval_s_est:.0f} s at {dropped.eval_passes_per_s:.0f} fp32 passes/s")
    for p in live:
        p.epochs = min(fit, p.recipe_epochs)
        if p.epochs < p.recipe_epochs:
            p.overrides.append(f"epochs={p.epochs}")
        p.train_s_est = p.epochs * p.epoch_s_est
    return plans


def publish_fp16(run_dir: Path, target: Path, built: dict[str, Any] | None = None) -> Path:
    """The run's selected checkpoint as fp16 safetensors + config.json + metrics.jsonl in ``target``
    (and ``build.json``: ``built`` with the weights' sha256, when given)."""
    src = run_dir / "best" if (run_dir / "best" / CONFIG).exists() else run_dir
    tensors, _ = load_tensors(src / WEIGHTS)
    half = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in tensors.items()}
    config = json.loads((src / CONFIG).read_text())
    config["published"] = {"dtype": "float16", "from": f"{src.name}/" if src != run_dir else "last epoch",
                           "note": "evaluated as published: these fp16 weights, upcast to fp32 on load"}

    config.pop(WEIGHTS_KEY, None)  # the run's fp32 file's; write_pair records the fp16 file's

    def write(tmp: Path) -> None:  # one unit: the previous entry (and its eval.json) until this one is whole
        write_pair(tmp, half, config, {"dtype": "float16"})
        shutil.copyfile(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        if built is not None:
            (tmp / BUILD).write_text(json.dumps({**built, "sha256": sha256_of(tmp / WEIGHTS)}, indent=2) + "\n")
    return replace_dir(target, write)


def card_text(zoo_dir: Path) -> str:
    """MODEL_CARD.md over every evaluated entry of ``zoo_dir`` (the digits demo last; an entry whose
    evaluation is still to come is left out until it has one)."""
    dirs = sorted((p for p in zoo_dir.glob("*") if (p / "eval.json").exists()),
                  key=lambda p: (p.name == "quickstart", p.name))
    notes = zoo_dir / NOTES
    return zoo_card(dirs, notes.read_text() if notes.exists() else None)


def regenerate_card(zoo_dir: Path, card: Path) -> Path:
    return atomic_write_text(card, card_text(zoo_dir))


def folder_name(entry_id: str, dataset: str) -> str:
    """``zoo/<id>`` for CIFAR-10 (the published folders), ``zoo/<id>-<dataset>`` for any other dataset, so
    that building an entry on another dataset never replaces the published CIFAR-10 weights."""
    return entry_id if dataset == "cifar10" else f"{entry_id}-{dataset}"


def _published(folder: Path, recipe_name: str, overrides: list[str]) -> dict[str, Any] | None:
    """The build record of a zoo folder when it holds this recipe's published weights, unchanged since."""
    try:
        record = json.loads((folder / BUILD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = record.get("recipe") == recipe_name and record.get("overrides") == overrides
    return record if same and (folder / WEIGHTS).exists() and sha256_of(folder / WEIGHTS) == record.get("sha256") else None


def _decided_epochs(folders: list[Path], work_dir: Path, entries: list[ZooEntry]) -> int | None:
    """The epochs an interrupted build of these entries already chose (a published entry's, else the
    work dir's plan), so that a resumed build keeps one schedule for all of them."""
    for folder in folders:
        try:
            return int(json.loads((folder / BUILD).read_text())["epochs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    try:
        chosen = json.loads((work_dir / "plan.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return chosen.get("epochs") if chosen.get("ids") == [e.id for e in entries] else None


def training_record(run_dir: Path, epochs: int, wall_s: float) -> dict[str, Any]:
    """Minutes, images/s, device and precision of a finished training, from its log and config."""
    import torch

    rows = read_jsonl(run_dir / "metrics.jsonl")
    train_s = sum(r.get("train_time_s", 0.0) for r in rows)
    images = sum(r.get("train_time_s", 0.0) * r.get("images_per_s", 0.0) for r in rows)
    trained_on = json.loads((run_dir / CONFIG).read_text()).get("trained_on", {})
    device = trained_on.get("device", "?")
    if device == "cpu":
        device = f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"
    return {"epochs": len(rows), "planned_epochs": epochs, "train_minutes": round(train_s / 60, 1),
            "wall_minutes": round(wall_s / 60, 1), "images_per_s": round(images / train_s, 1) if train_s else None,
            "device": device, "precision": trained_on.get("precision"), "torch": trained_on.get("torch")}


def build(ids: list[str] | None = None, entries: list[ZooEntry] | None = None, *, zoo_dir: Path = ROOT / "zoo",
          registry: Path | None = None, card: Path = ROOT / "MODEL_CARD.md", work_dir: Path = Path("runs/zoo"),
          budget_minutes: float | None = None, train_minutes: float | None = None, tier: str | None = None,
          data_dir: str | None = None, device: str | None = None,
          overrides: list[str] | None = None, suite: str = "paper", n_examples: int = 1000,
          eval_batch_size: int = 256, repo_prefix: str = "againzoo", parts_dir: Path | None = None,
          split_mb: float = 16, progress: bool = True, eval_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build zoo entries (``ids`` from :data:`ENTRIES`, a ``tier`` of :data:`TIERS`, or explicit
    ``entries``); returns the manifest. ``train_minutes`` caps each entry's training (a tier's default).

    Resumable: called again after an interruption, it keeps the epochs it chose, skips what is done
    (an entry whose ``zoo/<id>/build.json`` matches its published weights is not trained again, one
    whose evaluation recorded those weights' sha256 is not evaluated again) and resumes a stopped
    training from its run directory. A run that collapsed (catastrophic overfitting) is never
    published. ``manifest.json`` is rewritten after every entry, and with ``parts_dir`` every finished
    entry is packed there at once (``NN-<id>.tar.NNN`` + ``NN-<id>.parts.json``, with the registry,
    card and manifest as they stand), so a build stopped part-way still hands back every finished entry."""
    from .training import train

    t0 = time.time()
    if tier is not None:
        if tier not in TIERS:
            raise ConfigError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
        if ids:
            raise ConfigError("give zoo entries or a tier, not both")
        ids, tier_minutes = list(TIERS[tier][0]), TIERS[tier][1]
        train_minutes = tier_minutes if train_minutes is None else train_minutes
    if entries is None:
        unknown = [i for i in ids or [] if i not in ENTRIES]
        if unknown:
            raise ConfigError(f"unknown zoo entries {unknown}; known: {', '.join(ENTRIES)}")
        entries = [ENTRIES[i] for i in ids or TIERS["gpu"][0]]
    if train_minutes is not None and train_minutes <= 0:
        raise ConfigError(f"train_minutes must be > 0, got {train_minutes}")
    work_dir, zoo_dir = Path(work_dir), Path(zoo_dir)
    registry = Path(registry) if registry is not None else registry_path()
    budget_s = None if budget_minutes is None else 60.0 * budget_minutes
    manifest: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_minutes": budget_minutes,
                                "train_minutes": train_minutes, "tier": tier,
                                "device": device or "auto", "suite": suite, "n_examples": n_examples,
                                "eval_batch_size": eval_batch_size, "entries": []}
    datasets = [recipes_mod.load(e.recipe, [*e.overrides, *(overrides or [])]).data.dataset for e in entries]
    decided = _decided_epochs([zoo_dir / folder_name(e.id, d) for e, d in zip(entries, datasets)], work_dir, entries)
    plans = plan(entries, budget_s, n_examples, device, list(overrides or []), eval_batch_size,
                 None if train_minutes is None else 60.0 * train_minutes, epochs=decided)
    manifest["resumed"] = decided is not None
    manifest["sizing_s"] = round(time.time() - t0, 1)
    live = [p for p in plans if not p.skipped]
    if live:
        atomic_write_json(work_dir / "plan.json", {"ids": [e.id for e in entries], "epochs": live[0].epochs})
    bar = tqdm(total=len(entries) * 3, desc="zoo build", unit="stage", disable=None if progress else True)
    slow = {"train": 1.0, "eval": 1.0}  # how much slower than estimated the finished entries ran
    for k, p in enumerate(plans):
        entry = p.entry
        target = zoo_dir / folder_name(entry.id, p.recipe.data.dataset)
        done = _published(target, p.recipe.name, p.overrides) if not p.skipped else None
        if budget_s is not None and not p.skipped and done is None and p.epoch_s_est:  # shrink after an overrun
            left = budget_s - (time.time() - t0)
            p.eval_s_est *= slow["eval"]
            p.epoch_s_est *= slow["train"]
            fit = math.floor((left - p.eval_s_est) / p.epoch_s_est)
            if fit < 1:
                p.skipped = f"ran out of budget: {left:.0f} s left, evaluation alone ~{p.eval_s_est:.0f} s"
            elif fit < p.epochs:
                p.epochs = fit
                p.overrides = [o for o in p.overrides if not o.startswith("epochs=")] + [f"epochs={fit}"]
        record: dict[str, Any] = {"id": entry.id, "folder": str(target), "recipe": entry.recipe,
                                  "recipe_epochs": p.recipe_epochs,
                                  "epochs": p.epochs, "overrides": p.overrides,
                                  "measured_images_per_s": p.images_per_s,
                                  "measured_eval_passes_per_s": p.eval_passes_per_s,
                                  "estimated_train_s": p.train_s_est, "estimated_eval_s": p.eval_s_est}
        manifest["entries"].append(record)
        if p.skipped:
            record["skipped"] = p.skipped
            bar.update(3)
            atomic_write_json(work_dir / "manifest.json", manifest)
            continue
        if done is None:
            ts = time.time()
            run_dir = work_dir / entry.id / p.recipe.name
            if (run_dir / "state").exists():  # an interrupted build: continue that training
                run = train(resume=run_dir, device=device, data_dir=data_dir, progress=progress)
            else:
                run = train(entry.recipe, device=device, data_dir=data_dir, overwrite=run_dir.exists(),
                            overrides=[*p.overrides, f"output_dir={work_dir / entry.id}"], progress=progress)
            record["train_s"] = round(time.time() - ts, 1)
            bar.update(1)
            collapse = run_collapse(run)
            if collapse is not None:
                record["refused"] = f"not published: {collapse}"
                bar.update(2)
                atomic_write_json(work_dir / "manifest.json", manifest)
                continue
            built = {"id": entry.id, "recipe": p.recipe.name, "overrides": p.overrides, "epochs": p.epochs,
                     "training": training_record(run, p.epochs, time.time() - ts),
                     "built": time.strftime("%Y-%m-%d %H:%M:%S")}
            publish_fp16(run, target, built)
            done = json.loads((target / BUILD).read_text())
        else:
            record["train_s"] = 0.0
            record["reused"] = f"{target} already holds this recipe's published weights ({BUILD})"
            bar.update(1)
        bar.update(1)
        record["training"] = done["training"]
        weights = target / WEIGHTS
        if done.get("evaluated_sha256") == done["sha256"] and (target / "eval.json").exists():
            result = json.loads((target / "eval.json").read_text())
            record["eval_s"] = 0.0
        else:
            te = time.time()
            # finished attacks are kept, so an evaluation stopped part-way continues. A model without a gate
            # keeps per-example results only (kilobytes): beside its published weights, so that a later
            # session or another machine continues from the zoo folder alone; a gated model's state holds
            # adversarial images (its gate diagnostics read them) and stays in the work dir
            state_dir = work_dir / entry.id / "eval_state" if p.recipe.model.again.enabled else target / EVAL_STATE
            result, _ = evaluate_checkpoint(str(target), suite, data_dir, n_examples, device=device,
                                            progress=progress, batch_size=eval_batch_size,
                                            state_dir=state_dir, **(eval_kw or {}))
            record["eval_s"] = round(time.time() - te, 1)
            done.update(evaluated_sha256=done["sha256"], eval_minutes=round(record["eval_s"] / 60, 1), suite=suite,
                        n_examples=n_examples)
            if "seconds_all_calls" in result["runtime"]:  # continued from units that earlier calls computed
                done["eval_minutes_all_calls"] = round(result["runtime"]["seconds_all_calls"] / 60, 1)
            atomic_write_json(target / BUILD, done)
            if p.eval_s_est:
                slow["eval"] = max(slow["eval"], record["eval_s"] / p.eval_s_est)
                slow["train"] = max(slow["train"], record["train_s"] / (p.epochs * p.epoch_s_est) or 1.0)
        shutil.rmtree(target / EVAL_STATE, ignore_errors=True)  # the evaluation is recorded: its state is spent
        bar.update(1)
        recipe = p.recipe
        digest = sha256_of(weights)
        # a note written for these very weights survives their re-registration by a resumed build
        note = next((e.note for e in registry_entries(registry) if (e.model, e.dataset, e.sha256) ==
                     (entry.id, recipe.data.dataset, digest)), None)
        reg = PretrainedEntry(
            model=entry.id, dataset=recipe.data.dataset, repo_id=f"{repo_prefix}/{entry.id}-{recipe.data.dataset}",
            sha256=digest, recipe=recipe.name, note=note,
            metrics={k: round(v, 4) for k, v in {"clean": result["clean_acc"], "autoattack": result["columns"].get("AA"),
                                                 "worst_case": result["worst_case_acc"]}.items() if v is not None},
            local=os.path.relpath(weights, registry.parent), arch=entry.arch, tag=entry.tag,
            training={k: done["training"][k] for k in ("device", "precision", "epochs", "train_minutes",
                                                       "images_per_s")})
        register(reg, registry)
        record.update(registry=asdict(reg), files=_files(target))
        regenerate_card(zoo_dir, card)
        manifest["seconds"] = round(time.time() - t0, 1)
        manifest["card"] = str(card)
        atomic_write_json(work_dir / "manifest.json", manifest)
        if parts_dir is not None:
            root = _common_root([target, card, registry, work_dir])
            record["parts"] = pack([target, card, registry, work_dir / "manifest.json"], root, Path(parts_dir),
                                   split_mb, name=f"{k + 1:02d}-{entry.id}")["parts"]
    regenerate_card(zoo_dir, card)
    bar.close()
    manifest["seconds"] = round(time.time() - t0, 1)
    manifest["card"] = str(card)
    atomic_write_json(work_dir / "manifest.json", manifest)
    return manifest


DEPLOYED = "deployed.json"  # zoo/<id>/deployed.json: the robustness of its ONNX exports, measured on the files
DEPLOYED_STATE = "deployed_state"  # zoo/<id>/deployed_state/: an unfinished deployed evaluation (bits)


def evaluate_deployed(folder: Path, precisions: tuple[str, ...] = ("fp32", "int8", "fp16"),
                      data_dir: str | None = None, n_examples: int = 1000, queries: int = 5000, suite: str = "quick",
                      aa_budget: dict[str, int] | None = None, progress: bool = True,
                      state_dir: str | Path | None = None) -> dict[str, Any]:
    """Export a published model at each precision (verified; the files go to a temporary folder, never
    into git), evaluate the files as deployed (:func:`againzoo.onnx_eval.evaluate_onnx_files`: each
    transfer attack crafted once, applied to every file) and write the summaries to
    ``<folder>/deployed.json``, named by the weights' sha256; regenerated cards show them.
    A precision whose file fails its verification is recorded as refused, with the figures that refused
    it, and the others go on: the record says which files a user can deploy and why the others are not.
    Every finished slice of an attack's per-file results and of a Square run is kept in ``state_dir``
    (default ``<folder>/deployed_state/``, removed once ``deployed.json`` is written): bits, kilobytes,
    so the same call after an interruption, or in another session from a committed state, continues."""
    import tempfile

    from .integrity import WEIGHTS_KEY
    from .onnx import export_checkpoint
    from .onnx_eval import evaluate_onnx_files
    from . import onnx_precision as P

    folder = Path(folder)
    digest = sha256_of(folder / WEIGHTS)
    state = Path(state_dir) if state_dir is not None else folder / DEPLOYED_STATE
    records: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="againzoo-deploy-") as tmp:
        written: dict[str, tuple[Path, dict[str, Any]]] = {}
        for precision in precisions:
            path = Path(tmp) / f"model_{precision}.onnx"
            try:
                written[precision] = path, export_checkpoint(str(folder), path, data_dir=data_dir,
                                                             precision=precision, n_examples=n_examples)
            except P.PrecisionError as e:
                records[precision] = {"refused": str(e).replace(str(path), str(folder)), "verification": e.figures,
                                      "rule": {"min_agreement": P.MIN_AGREEMENT, "max_clean_drop": P.MAX_CLEAN_DROP}}
        if written:
            evaluated = evaluate_onnx_files([path for path, _ in written.values()], str(folder), suite, data_dir,
                                            n_examples, queries, aa_budget=aa_budget,
                                            outputs=[Path(tmp) / f"{p}.eval.json" for p in written],
                                            progress=progress, state_dir=state)
            for (precision, (path, report)), r in zip(written.items(), evaluated):
                records[precision] = {k: r[k] for k in ("file_sha256", "clean_acc", "columns", "worst_case_acc",
                                                        "worst_case_ci95", "square_queries", "suite", "data",
                                                        "seconds", "cost", "budget", "date")}
                records[precision]["file_mb"] = round(path.stat().st_size / 2**20, 2)
                records[precision]["verification"] = report.get("precision_check")
    records = {p: records[p] for p in precisions}  # in the order asked
    out = {WEIGHTS_KEY: digest, "records": records}
    atomic_write_json(folder / DEPLOYED, out)
    if state_dir is None:
        shutil.rmtree(state, ignore_errors=True)  # recorded: the default state is spent
    return out


def _common_root(paths: list[Path]) -> Path:
    """The deepest folder above every path (the packs store paths relative to it)."""
    return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))


def _files(folder: Path) -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(folder.iterdir()) if p.is_file()]


# -- results in parts ------------------------------------------------------------------------

INDEX = ".parts.json"


def pack(paths: list[Path], root: Path, out_dir: Path, split_mb: float = 16, name: str = "zoo") -> dict[str, Any]:
    """Write ``paths`` (files or folders, stored relative to ``root``) as one tar split into parts of
    at most ``split_mb`` MiB in ``out_dir`` (``<name>.tar.000``, ...), with ``<name>.parts.json``
    (sha256 of the archive and of each part)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:
        for p in paths:
            tar.add(p, arcname=str(Path(p).resolve().relative_to(Path(root).resolve())))
    limit = int(split_mb * 2**20)
    parts = []
    with open(archive, "rb") as f:
        for i in range(math.ceil(archive.stat().st_size / limit) or 1):
            part = out_dir / f"{name}.tar.{i:03d}"
            part.write_bytes(f.read(limit))
            parts.append({"name": part.name, "bytes": part.stat().st_size, "sha256": sha256_of(part)})
    index = {"archive_sha256": sha256_of(archive), "archive_bytes": archive.stat().st_size, "parts": parts}
    archive.unlink()
    atomic_write_json(out_dir / f"{name}{INDEX}", index)
    return index


def join(parts_dir: Path, into: Path) -> list[str]:
    """Check and reassemble every pack in ``parts_dir`` (in name order: a later entry's registry,
    card and manifest supersede an earlier one's), then extract them under ``into``; returns the members."""
    indexes = sorted(Path(parts_dir).glob(f"*{INDEX}"))
    if not indexes:
        raise CheckpointError(f"no *{INDEX} in {parts_dir}: not a folder written by `againzoo zoo build --parts-dir`")
    names: list[str] = []
    for index_path in indexes:
        index = json.loads(index_path.read_text())
        archive = Path(parts_dir) / (index_path.name[: -len(INDEX)] + ".tar")
        try:  # the joined archive never outlives this call, also when a part is missing or corrupted
            with open(archive, "wb") as out:
                for part in index["parts"]:
                    p = Path(parts_dir) / Path(part["name"]).name
                    if not p.exists():
                        raise CheckpointError(f"missing part {p}")
                    if sha256_of(p) != part["sha256"]:
                        raise CheckpointError(f"sha256 mismatch for part {p}: the transfer corrupted it")
                    out.write(p.read_bytes())
            if sha256_of(archive) != index["archive_sha256"]:
                raise CheckpointError(f"sha256 mismatch for the joined archive {archive}")
            with tarfile.open(archive) as tar:
                names += tar.getnames()
                tar.extractall(into, filter="data")  # refuses absolute paths and '..' (no writes outside `into`)
        finally:
            archive.unlink(missing_ok=True)
    return names
