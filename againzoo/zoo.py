"""The zoo build: train the zoo recipes, publish fp16 weights, evaluate exactly those weights, register them.

For each entry (a zoo id such as ``again_resnet18`` and its recipe), :func:`build`:

1. **sizes** the work: it measures the recipe's training throughput (the trainer's own step) and,
   under a time budget, lowers the epochs so that training and the evaluation fit the entry's share
   of what is left, or skips the entry and says why;
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
the timings and every produced file with its sha256. :func:`pack` writes the produced files as one
tar split into parts of at most ``split_mb`` MiB, with an index of sha256 digests; :func:`join`
checks and reassembles them (the way a GPU machine's results come back in parts of 16 MiB).
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

from . import __version__
from . import recipes as recipes_mod
from .card import zoo_card
from .errors import CheckpointError, ConfigError
from .evaluation import evaluate_checkpoint
from .hub import CONFIG, WEIGHTS, sha256_of
from .io import atomic_write_json, atomic_write_text, load_tensors, save_tensors
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
# Estimated forward-backward passes per evaluated image for the paper suite: PGD-10/20/50/100, C&W-30
# and the non-adaptive PGD-20 (230), and the official AutoAttack with two gates (APGD-CE 100,
# APGD-T 9 x 100, FAB-T 9 x 100, Square 5,000 forward passes ~ 1,700, on the examples still robust),
# about 4,000 in all; evaluation runs in fp32, taken as half the training step's bf16 rate.
EVAL_PASSES_PER_IMAGE = 4_000
EVAL_SLOWDOWN = 2.0


@dataclass
class Plan:
    entry: ZooEntry
    recipe: recipes_mod.Recipe  # as loaded with the entry's and the caller's overrides (epochs not yet re-sized)
    epochs: int
    recipe_epochs: int
    images_per_s: float | None = None
    train_s_est: float | None = None
    eval_s_est: float | None = None
    skipped: str | None = None
    overrides: list[str] = field(default_factory=list)


def size(entry: ZooEntry, seconds_left: float | None, entries_left: int, n_eval: int, device: str | None,
         overrides: list[str]) -> Plan:
    """Fit ``entry`` into its share of ``seconds_left`` (None: no budget) from a measured throughput."""
    recipe = recipes_mod.load(entry.recipe, [*entry.overrides, *overrides])
    plan = Plan(entry, recipe, recipe.epochs, recipe.epochs, overrides=[*entry.overrides, *overrides])
    if seconds_left is None:
        return plan
    from .training.throughput import measure

    px = 16 if recipe.data.dataset == "digits" else 32
    m = measure(recipe, device, (3, px, px), steps=2, warmup=1)
    plan.images_per_s = m["images_per_s"]
    passes = recipe.attack.steps + 1 if recipe.method.name != "standard" else 1
    n_train = TRAIN_IMAGES[recipe.data.dataset] - recipe.data.val_size
    e = recipe.eval
    monitored = (e.n_val + e.n_test + e.n_train) * (e.attack_steps + 1) / passes * (2 if recipe.ema else 1)
    epoch_s = (n_train + monitored / e.every) / plan.images_per_s
    plan.eval_s_est = n_eval * EVAL_PASSES_PER_IMAGE * EVAL_SLOWDOWN / (plan.images_per_s * passes)
    share = seconds_left / entries_left
    fit = math.floor((share - plan.eval_s_est) / epoch_s) if share > plan.eval_s_est else 0
    if fit < 1:
        plan.skipped = (f"not even one epoch fits: {share:.0f} s left for it, one epoch ~{epoch_s:.0f} s, "
                        f"evaluation ~{plan.eval_s_est:.0f} s at {plan.images_per_s:.0f} img/s")
        return plan
    if fit < recipe.epochs:
        plan.epochs = fit
        plan.overrides.append(f"epochs={fit}")
    plan.train_s_est = plan.epochs * epoch_s
    return plan


def publish_fp16(run_dir: Path, target: Path) -> Path:
    """The run's selected checkpoint as fp16 safetensors + config.json + metrics.jsonl in ``target``."""
    src = run_dir / "best" if (run_dir / "best" / CONFIG).exists() else run_dir
    tensors, _ = load_tensors(src / WEIGHTS)
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_tensors(target / WEIGHTS, half, metadata={"format": "pt", "dtype": "float16", "againzoo_version": __version__})
    config = json.loads((src / CONFIG).read_text())
    config["published"] = {"dtype": "float16", "from": f"{src.name}/" if src != run_dir else "last epoch",
                           "note": "evaluated as published: these fp16 weights, upcast to fp32 on load"}
    atomic_write_json(target / CONFIG, config)
    shutil.copyfile(run_dir / "metrics.jsonl", target / "metrics.jsonl")
    return target


def regenerate_card(zoo_dir: Path, card: Path) -> Path:
    """MODEL_CARD.md over every evaluated entry of ``zoo_dir`` (the digits demo last)."""
    dirs = sorted((p for p in zoo_dir.glob("*") if (p / "eval.json").exists()),
                  key=lambda p: (p.name == "quickstart", p.name))
    return atomic_write_text(card, zoo_card(dirs))


def build(ids: list[str] | None = None, entries: list[ZooEntry] | None = None, *, zoo_dir: Path = ROOT / "zoo",
          registry: Path | None = None, card: Path = ROOT / "MODEL_CARD.md", work_dir: Path = Path("runs/zoo"),
          budget_minutes: float | None = None, data_dir: str | None = None, device: str | None = None,
          overrides: list[str] | None = None, suite: str = "paper", n_examples: int = 1000,
          repo_prefix: str = "againzoo", progress: bool = True, eval_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build zoo entries (``ids`` from :data:`ENTRIES`, or explicit ``entries``); returns the manifest."""
    from .training import train

    t0 = time.time()
    if entries is None:
        unknown = [i for i in ids or [] if i not in ENTRIES]
        if unknown:
            raise ConfigError(f"unknown zoo entries {unknown}; known: {', '.join(ENTRIES)}")
        entries = [ENTRIES[i] for i in ids or ENTRIES]
    work_dir, zoo_dir = Path(work_dir), Path(zoo_dir)
    budget_s = None if budget_minutes is None else 60.0 * budget_minutes
    manifest: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_minutes": budget_minutes,
                                "device": device or "auto", "suite": suite, "n_examples": n_examples, "entries": []}
    bar = tqdm(total=len(entries) * 3, desc="zoo build", unit="stage", disable=not progress)
    for k, entry in enumerate(entries):
        left = None if budget_s is None else budget_s - (time.time() - t0)
        plan = size(entry, left, len(entries) - k, n_examples, device, list(overrides or []))
        record: dict[str, Any] = {"id": entry.id, "recipe": entry.recipe, "recipe_epochs": plan.recipe_epochs,
                                  "epochs": plan.epochs, "overrides": plan.overrides,
                                  "measured_images_per_s": plan.images_per_s,
                                  "estimated_train_s": plan.train_s_est, "estimated_eval_s": plan.eval_s_est}
        manifest["entries"].append(record)
        if plan.skipped:
            record["skipped"] = plan.skipped
            bar.update(3)
            continue
        ts = time.time()
        run = train(entry.recipe, device=device, data_dir=data_dir,
                    overrides=[*plan.overrides, f"output_dir={work_dir / entry.id}"], progress=progress)
        record["train_s"] = round(time.time() - ts, 1)
        bar.update(1)
        target = publish_fp16(run, zoo_dir / entry.id)
        bar.update(1)
        te = time.time()
        result, _ = evaluate_checkpoint(str(target), suite, data_dir, n_examples, device=device, progress=progress,
                                        **(eval_kw or {}))
        record["eval_s"] = round(time.time() - te, 1)
        bar.update(1)
        recipe = plan.recipe
        weights = target / WEIGHTS
        reg = PretrainedEntry(
            model=entry.id, dataset=recipe.data.dataset, repo_id=f"{repo_prefix}/{entry.id}-{recipe.data.dataset}",
            sha256=sha256_of(weights), recipe=recipe.name,
            metrics={k: round(v, 4) for k, v in {"clean": result["clean_acc"], "autoattack": result["columns"].get("AA"),
                                                 "worst_case": result["worst_case_acc"]}.items() if v is not None},
            local=os.path.relpath(weights, (registry or registry_path()).parent))
        register(reg, registry)
        record.update(registry=asdict(reg), files=_files(target))
    regenerate_card(zoo_dir, card)
    bar.close()
    manifest["seconds"] = round(time.time() - t0, 1)
    manifest["card"] = str(card)
    atomic_write_json(work_dir / "manifest.json", manifest)
    return manifest


def _files(folder: Path) -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(folder.iterdir()) if p.is_file()]


# -- results in parts ------------------------------------------------------------------------

INDEX = "parts.json"


def pack(paths: list[Path], root: Path, out_dir: Path, split_mb: float = 16) -> dict[str, Any]:
    """Write ``paths`` (files or folders, stored relative to ``root``) as one tar split into parts of
    at most ``split_mb`` MiB in ``out_dir``, with ``parts.json`` (sha256 of the archive and of each part)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "zoo.tar"
    with tarfile.open(archive, "w") as tar:
        for p in paths:
            tar.add(p, arcname=str(Path(p).resolve().relative_to(Path(root).resolve())))
    limit = int(split_mb * 2**20)
    parts = []
    with open(archive, "rb") as f:
        for i in range(math.ceil(archive.stat().st_size / limit) or 1):
            name = f"zoo.tar.{i:03d}"
            (out_dir / name).write_bytes(f.read(limit))
            parts.append({"name": name, "bytes": (out_dir / name).stat().st_size, "sha256": sha256_of(out_dir / name)})
    index = {"archive_sha256": sha256_of(archive), "archive_bytes": archive.stat().st_size, "parts": parts}
    archive.unlink()
    atomic_write_json(out_dir / INDEX, index)
    return index


def join(parts_dir: Path, into: Path) -> list[str]:
    """Check and reassemble :func:`pack`'s parts, then extract them under ``into``; returns the members."""
    index_path = Path(parts_dir) / INDEX
    if not index_path.exists():
        raise CheckpointError(f"no {INDEX} in {parts_dir}: not a folder written by `againzoo zoo build --parts-dir`")
    index = json.loads(index_path.read_text())
    archive = Path(parts_dir) / "zoo.tar"
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
            raise CheckpointError(f"sha256 mismatch for the joined archive from {parts_dir}")
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            tar.extractall(into, filter="data")  # refuses absolute paths and '..' (no writes outside `into`)
    finally:
        archive.unlink(missing_ok=True)
    return names
