"""The zoo build: train the zoo recipes, publish fp16 weights, evaluate exactly those weights, register them.

For each entry (a zoo id such as ``again_resnet18`` and its recipe), :func:`build`:

1. **sizes** the work: it measures each recipe's training throughput (the trainer's own step) and
   the fp32 pass rate of the evaluation and, under a time budget, gives every entry the same number
   of epochs so that all trainings and evaluations fit, or skips entries and says why;
2. **trains** the recipe (a run directory under ``work_dir``);
3. **publishes** the selected checkpoint (``best/``: chosen on the held-out slice, the weight
   average when the recipe has EMA) as ``zoo/<id>/model.safetensors`` in fp16 (floating tensors in
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

from safetensors.torch import save_file
from tqdm.auto import tqdm

from .version import __version__
from . import recipes as recipes_mod
from .card import NOTES, zoo_card
from .errors import CheckpointError, ConfigError
from .evaluation import evaluate_checkpoint
from .checkpoint import CONFIG, WEIGHTS, sha256_of
from .io import atomic_write_json, atomic_write_text, load_tensors, replace_dir
from .registry import PretrainedEntry, register
from .registry import path as registry_path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ZooEntry:
    """A published model: its id (the registry's model name and the ``zoo/`` folder) and recipe."""

    id: str
    recipe: str
    overrides: tuple[str, ...] = ()


ENTRIES = {
    "again_resnet18": ZooEntry("again_resnet18", "cifar10_resnet18_again_pgd_at_zoo"),
    "resnet18_cifar": ZooEntry("resnet18_cifar", "cifar10_resnet18_pgd_at_zoo"),
}
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
    steps, warmup = (5, 2) if (device or "").startswith("cuda") else (2, 1)
    train_rate = measure(recipe, device, (3, px, px), steps=steps, warmup=warmup)["images_per_s"]
    # the evaluation's attacks: fp32, contiguous, a forward-backward pass per step, no weight average
    plain = recipe.model_copy(update={"precision": "fp32", "channels_last": False, "ema": None,
                                      "batch_size": eval_batch,
                                      "method": recipe.method.model_copy(update={"name": "standard", "awp": None})})
    eval_rate = measure(plain, device, (3, px, px), steps=steps, warmup=warmup)["images_per_s"]
    return train_rate, eval_rate


def plan(entries: list[ZooEntry], seconds: float | None, n_eval: int, device: str | None, overrides: list[str],
         eval_batch: int = 256) -> list[Plan]:
    """Size every entry from measured throughputs so that all of them train for the **same** number of
    epochs (a fair comparison) and, with their evaluations, fit in ``seconds`` (None: no budget).
    Entries that cannot get one epoch each are dropped from the end, with the reason."""
    plans = []
    for entry in entries:
        recipe = recipes_mod.load(entry.recipe, [*entry.overrides, *overrides])
        plans.append(Plan(entry, recipe, recipe.epochs, recipe.epochs, overrides=[*entry.overrides, *overrides]))
    if seconds is None:
        return plans
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
        fit = math.floor((seconds - sum(p.eval_s_est for p in live)) / sum(p.epoch_s_est for p in live))
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


def publish_fp16(run_dir: Path, target: Path) -> Path:
    """The run's selected checkpoint as fp16 safetensors + config.json + metrics.jsonl in ``target``."""
    src = run_dir / "best" if (run_dir / "best" / CONFIG).exists() else run_dir
    tensors, _ = load_tensors(src / WEIGHTS)
    half = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in tensors.items()}
    config = json.loads((src / CONFIG).read_text())
    config["published"] = {"dtype": "float16", "from": f"{src.name}/" if src != run_dir else "last epoch",
                           "note": "evaluated as published: these fp16 weights, upcast to fp32 on load"}

    def write(tmp: Path) -> None:  # one unit: the previous entry (and its eval.json) until this one is whole
        save_file(half, str(tmp / WEIGHTS), metadata={"format": "pt", "dtype": "float16", "againzoo_version": __version__})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
    return replace_dir(target, write)


def regenerate_card(zoo_dir: Path, card: Path) -> Path:
    """MODEL_CARD.md over every evaluated entry of ``zoo_dir`` (the digits demo last)."""
    dirs = sorted((p for p in zoo_dir.glob("*") if (p / "eval.json").exists()),
                  key=lambda p: (p.name == "quickstart", p.name))
    notes = zoo_dir / NOTES
    return atomic_write_text(card, zoo_card(dirs, notes.read_text() if notes.exists() else None))


def build(ids: list[str] | None = None, entries: list[ZooEntry] | None = None, *, zoo_dir: Path = ROOT / "zoo",
          registry: Path | None = None, card: Path = ROOT / "MODEL_CARD.md", work_dir: Path = Path("runs/zoo"),
          budget_minutes: float | None = None, data_dir: str | None = None, device: str | None = None,
          overrides: list[str] | None = None, suite: str = "paper", n_examples: int = 1000,
          eval_batch_size: int = 256, repo_prefix: str = "againzoo", parts_dir: Path | None = None,
          split_mb: float = 16, progress: bool = True, eval_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build zoo entries (``ids`` from :data:`ENTRIES`, or explicit ``entries``); returns the manifest.

    ``manifest.json`` is rewritten after every entry, and with ``parts_dir`` every finished entry is
    packed there at once (``NN-<id>.tar.NNN`` + ``NN-<id>.parts.json``, with the registry, card and
    manifest as they stand), so a build stopped part-way still hands back every finished entry."""
    from .training import train

    t0 = time.time()
    if entries is None:
        unknown = [i for i in ids or [] if i not in ENTRIES]
        if unknown:
            raise ConfigError(f"unknown zoo entries {unknown}; known: {', '.join(ENTRIES)}")
        entries = [ENTRIES[i] for i in ids or ENTRIES]
    work_dir, zoo_dir = Path(work_dir), Path(zoo_dir)
    registry = Path(registry) if registry is not None else registry_path()
    budget_s = None if budget_minutes is None else 60.0 * budget_minutes
    manifest: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_minutes": budget_minutes,
                                "device": device or "auto", "suite": suite, "n_examples": n_examples,
                                "eval_batch_size": eval_batch_size, "entries": []}
    plans = plan(entries, budget_s, n_examples, device, list(overrides or []), eval_batch_size)
    manifest["sizing_s"] = round(time.time() - t0, 1)
    bar = tqdm(total=len(entries) * 3, desc="zoo build", unit="stage", disable=None if progress else True)
    slow = {"train": 1.0, "eval": 1.0}  # how much slower than estimated the finished entries ran
    for k, p in enumerate(plans):
        entry = p.entry
        if budget_s is not None and not p.skipped:  # an earlier entry ran over its estimate: shrink this one
            left = budget_s - (time.time() - t0)
            p.eval_s_est *= slow["eval"]
            p.epoch_s_est *= slow["train"]
            fit = math.floor((left - p.eval_s_est) / p.epoch_s_est)
            if fit < 1:
                p.skipped = f"ran out of budget: {left:.0f} s left, evaluation alone ~{p.eval_s_est:.0f} s"
            elif fit < p.epochs:
                p.epochs = fit
                p.overrides = [o for o in p.overrides if not o.startswith("epochs=")] + [f"epochs={fit}"]
        record: dict[str, Any] = {"id": entry.id, "recipe": entry.recipe, "recipe_epochs": p.recipe_epochs,
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
        ts = time.time()
        run = train(entry.recipe, device=device, data_dir=data_dir,
                    overrides=[*p.overrides, f"output_dir={work_dir / entry.id}"], progress=progress)
        record["train_s"] = round(time.time() - ts, 1)
        bar.update(1)
        target = publish_fp16(run, zoo_dir / entry.id)
        bar.update(1)
        te = time.time()
        result, _ = evaluate_checkpoint(str(target), suite, data_dir, n_examples, device=device, progress=progress,
                                        batch_size=eval_batch_size, **(eval_kw or {}))
        record["eval_s"] = round(time.time() - te, 1)
        bar.update(1)
        if p.eval_s_est:
            slow["eval"] = max(slow["eval"], record["eval_s"] / p.eval_s_est)
            slow["train"] = max(slow["train"], record["train_s"] / (p.epochs * p.epoch_s_est))
        recipe = p.recipe
        weights = target / WEIGHTS
        reg = PretrainedEntry(
            model=entry.id, dataset=recipe.data.dataset, repo_id=f"{repo_prefix}/{entry.id}-{recipe.data.dataset}",
            sha256=sha256_of(weights), recipe=recipe.name,
            metrics={k: round(v, 4) for k, v in {"clean": result["clean_acc"], "autoattack": result["columns"].get("AA"),
                                                 "worst_case": result["worst_case_acc"]}.items() if v is not None},
            local=os.path.relpath(weights, registry.parent))
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
