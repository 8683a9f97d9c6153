"""The one training loop behind every recipe.

Per batch: the AGAIN schedule decides (a host-side Bernoulli draw, no device sync) whether this
batch uses AGAIN; the method crafts the adversarial batch and computes its loss; AWP, when
enabled, perturbs the weights around the optimiser step; the weight average (EMA, timm's
ModelEmaV3), when the recipe has one, is updated after the step. Per epoch: monitoring on a held-out
slice of the training set (which picks the best checkpoint; the test set never does), on the
test set and on a training subset (for the generalisation gaps of Fig. 3), then atomic writes of
``metrics.jsonl``, ``best/``, the last checkpoint, ``state/`` and ``curves.png``. With EMA on,
monitoring, selection and the saved weights are the average's; the raw weights' monitoring goes
to the ``raw_*`` columns.

Under ``torchrun`` the same loop runs data-parallel (:mod:`againzoo.training.distributed`):
``batch_size`` is the global batch, the loss is one DDP forward per step, monitoring is sharded
across the ranks and all-reduced, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from .. import recipes as recipes_mod
from ..adapter import AgainModel
from ..data import NUM_CLASSES, ArrayDataset, TensorLoader, load_dataset
from ..errors import ConfigError, DataError, OutputError, TrainingError
from ..gate_diagnostics import gate_figures
from ..factory import Normalized, build_model
from ..checkpoint import CONFIG, WEIGHTS, model_config, save_pretrained
from ..cpu import native_bf16
from ..models._base import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..io import append_jsonl, atomic_write, atomic_write_text, read_jsonl, remove_stale_temporaries, writable_dir
from ..losses import Aux, aux_mean, primary_aux
from ..recipes import Recipe
from ..runtime import accuracy, resolve_device
from .awp import AWP
from . import distributed as dist_mod
from .checkpoint import STATE, load_state, save_state
from .methods import METHODS, Method, StepContext
from .overfitting import FLAG, collapsed
from .schedule import lr_factor

log = logging.getLogger(__name__)
DATASET_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


def _split_val(ds: ArrayDataset, n_val: int, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    if n_val == 0:
        return ds, None
    if n_val >= len(ds):
        raise ConfigError(f"data.val_size={n_val} leaves no training data ({len(ds)} images)")
    order = np.random.default_rng(seed).permutation(len(ds))
    return ds.take(np.sort(order[n_val:]), "train"), ds.take(np.sort(order[:n_val]), "val")


def _to_tensor(ds: ArrayDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(ds.x[:n]).permute(0, 3, 1, 2).float().div(255)
    return x, torch.from_numpy(ds.y[:n])


def _model_args(recipe: Recipe, train: ArrayDataset) -> dict[str, Any]:
    mean, std = DATASET_STATS.get(recipe.data.dataset, (None, None))
    if mean is None:  # datasets without published statistics: measure them
        pix = train.x.reshape(-1, train.x.shape[-1]).astype(np.float64) / 255
        mean, std = tuple(float(v) for v in pix.mean(0)), tuple(float(max(v, 1e-3)) for v in pix.std(0))
    overlay = {"input_size": (train.x.shape[3], train.x.shape[1], train.x.shape[2]), "mean": tuple(mean), "std": tuple(std)}
    args = dict(recipe.model.kwargs)
    args["pretrained_cfg_overlay"] = {**overlay, **args.get("pretrained_cfg_overlay", {})}
    return args


def make_model(recipe: Recipe, num_classes: int, model_args: dict[str, Any]) -> torch.nn.Module:
    a = recipe.model.again
    again = a.model_options() if a.enabled else None
    model = build_model(recipe.model.arch, num_classes, again, **model_args)
    if isinstance(model, AgainModel):
        model.validate_values = False  # training data is checked once, at load: no host sync per step
    return model


def compile_model(model: torch.nn.Module, mode: str = "default") -> None:
    """``torch.compile`` (in ``mode``) of the network a training step runs (the backbone, AGAIN's hooks
    traced), in place: state_dict keys and the module tree stay as they are. Called after the weight
    average is copied from the model, so that the average runs eagerly."""
    target = model.backbone if isinstance(model, (AgainModel, Normalized)) else model
    target.compile(mode=mode)


@dataclass(frozen=True)
class DeviceSetup:
    """How a recipe runs on a device: autocast factory, memory format, precision name."""

    autocast: Callable[[], Any]
    channels_last: bool
    precision: str


def device_setup(recipe: Recipe, dev: torch.device) -> DeviceSetup:
    """How a recipe's training step runs on ``dev``. ``precision: auto`` is bf16 autocast on CUDA and
    on a CPU with native bf16 instructions (:func:`againzoo.cpu.native_bf16`), fp32 elsewhere;
    ``channels_last`` (None) follows bf16 (measured together on the CPU: ``benchmarks/RESULTS.md``);
    cuDNN autotuning on CUDA. The attacks of monitoring and evaluation always run in fp32."""
    use_bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and (dev.type == "cuda" or native_bf16()))
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    channels_last = recipe.channels_last if recipe.channels_last is not None else (dev.type == "cuda" or use_bf16)
    if dev.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    return DeviceSetup(autocast, channels_last, "bf16" if use_bf16 else "fp32")


def make_optimizer(recipe: Recipe, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """SGD or AdamW; PyTorch's fused kernel on CUDA (or when ``optimizer.fused`` asks), else the for-loop one.

    Every parameter carries a gradient from the start (zeros) and :func:`train_step` zeroes rather
    than frees them: a parameter used only on some steps (the ASE head, on batches without AGAIN)
    then gets a zero gradient instead of none, so the optimiser sees the same parameter list on every
    step. (PyTorch's fused SGD fails on a parameter that first gets a gradient after step one.)"""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    o = recipe.optimizer
    fused = o.fused if o.fused is not None else device.type == "cuda"
    fast = {"fused": True} if fused else {"foreach": False}
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov and o.momentum > 0, **fast)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, **fast)


def _plot_curves(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] + 1 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("train_clean_acc", "C0--"), ("test_clean_acc", "C0-"), ("train_robust_acc", "C3--"),
                       ("test_robust_acc", "C3-"), ("val_robust_acc", "C2:"), ("raw_val_robust_acc", "C1:")):
        pts = [(e, r[key]) for e, r in zip(ep, rows) if r.get(key) is not None]
        if pts:
            ax1.plot(*zip(*pts), style, label=key.replace("_acc", ""))
    ax1.set(xlabel="epoch", ylabel="accuracy", title="clean / PGD accuracy")
    if ax1.lines:
        ax1.legend(fontsize=8)
    ax2.plot(ep, [r["train_loss"] for r in rows], "k-")
    ax2.set(xlabel="epoch", ylabel="training loss", title="training loss")
    fig.tight_layout()
    atomic_write(run_dir / "curves.png", lambda p: fig.savefig(p, format="png", dpi=90))
    plt.close(fig)


def make_ema(recipe: Recipe, model: torch.nn.Module) -> ModelEmaV3 | None:
    """timm's ModelEmaV3 over the whole model (parameters and buffers) when the recipe asks for it."""
    e = recipe.ema
    if e is None:
        return None
    return ModelEmaV3(model, decay=e.decay, use_warmup=e.warmup, warmup_gamma=e.warmup_gamma,
                      warmup_power=e.warmup_power)


def train_step(ctx: StepContext, method: Method, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, awp: AWP | None = None, ema: ModelEmaV3 | None = None,
               step: int | None = None, ddp: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, Aux]:
    """One optimisation step: craft, (AWP perturb), loss, backward, step, (AWP restore), (EMA
    update number ``step``, 1-based); returns the loss, the logits and the ASE logits (or None) of
    the batch the update used, detached. ``ddp``: the loss runs through this
    ``DistributedDataParallel(DDPLoss(model))`` (gradients averaged over ranks), and rank 0's
    buffers are everyone's after the step (so the weight averages stay identical)."""
    model = ctx.model
    x_adv = method.craft(ctx, x, y)
    diff = awp.perturbation(ctx, method, x, y, x_adv) if awp is not None else None
    if diff is not None:
        awp.apply(diff, +1.0)
    model.train()
    with ctx.autocast():
        if ddp is None:
            loss, logits, aux = method.loss(ctx, model, x, y, x_adv)
        else:
            loss, logits, aux = ddp(lambda m: method.loss(ctx, m, x, y, x_adv))
    optimizer.zero_grad(set_to_none=False)  # see make_optimizer
    loss.backward()
    optimizer.step()
    if diff is not None:
        awp.apply(diff, -1.0)
    if ddp is not None:
        dist_mod.broadcast_buffers(model)
    if ema is not None:
        ema.update(model, step=step)
    aux = None if aux is None else (aux.detach() if isinstance(aux, torch.Tensor) else tuple(a.detach() for a in aux))
    return loss.detach(), logits.detach(), aux


class GateLog:
    """Per-epoch figures of the batches trained with AGAIN, accumulated on the device (no host sync
    per step): the main CE, the ASE CE (mean over the sites), the ASE head's accuracy and how often
    the prediction agrees with the class whose row dominates the training gate (the label for the
    paper's gate, the ASE head's argmax for the label-free ones). A final classifier that copies its
    gate shows ``gate_agree`` near 1 while held-out accuracy stays low."""

    KEYS = ("main_ce", "ase_ce", "ase_acc", "gate_agree")

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(self.KEYS), device=device, dtype=torch.float64)
        self.n = 0

    def add(self, logits: torch.Tensor, aux: Aux, y: torch.Tensor, label_gate: bool) -> None:
        head = primary_aux(aux)
        if head is None:
            return
        logits, head = logits.float(), head.float()
        gate_class = y if label_gate else head.argmax(1)
        pred = logits.argmax(1)
        ase_ce = aux_mean(aux, lambda a: F.cross_entropy(a.float(), y, reduction="sum"))
        self.sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"), ase_ce,
                                  (head.argmax(1) == y).sum(), (pred == gate_class).sum()]).double()
        self.n += len(y)

    def row(self, env: dist_mod.DistEnv, dev: torch.device) -> dict[str, float]:
        totals = dist_mod.all_reduce_sum([float(v) for v in self.sums] + [self.n], dev)
        n = totals[-1]
        return {f"train_{k}": (v / n if n else None) for k, v in zip(self.KEYS, totals)}


def train(recipe: Recipe | str | Path | None = None, resume: str | Path | None = None, device: str | None = None,
          data_dir: str | None = None, overrides: list[str] | None = None, progress: bool = True,
          overwrite: bool = False) -> Path:
    """Train a recipe (or resume ``resume``, a run dir) and return the run directory.

    A run directory that already holds a run (resumable state, a training log or a checkpoint) is
    never replaced silently: resume it, pick another ``output_dir``, or pass ``overwrite=True``."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "recipe.yaml").exists():
            raise ConfigError(f"cannot resume: {run_dir} has no recipe.yaml (not a run directory)")
        given, recipe = recipe, recipes_mod.load(run_dir / "recipe.yaml", overrides)
        if given is not None:  # a run continues its own recipe: a different one named beside --resume is a mistake
            other = given if isinstance(given, Recipe) else recipes_mod.load(given, overrides)
            mine, theirs = recipe.to_dict(), other.to_dict()
            changed = [k for k in mine if k != "output_dir" and mine[k] != theirs.get(k)]
            if changed:
                raise ConfigError(f"--resume {run_dir} continues the recipe it was started with ({run_dir / 'recipe.yaml'}); "
                                  f"the recipe given differs in {', '.join(changed)}: drop it to resume, or train it "
                                  f"into another run directory")
    elif recipe is None:
        raise ConfigError("give a recipe to train, or --resume RUN_DIR")
    elif not isinstance(recipe, Recipe):
        recipe = recipes_mod.load(recipe, overrides)
    if data_dir is not None:
        recipe.data.data_dir = data_dir
    env = dist_mod.env_from_launcher()
    dist_mod.local_batch_size(recipe.batch_size, env)
    dev = resolve_device(dist_mod.local_device(env, device))
    if resume is None:
        run_dir = Path(recipe.output_dir) / recipe.name
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputError(f"cannot train into {run_dir}: it is a file, not a run directory")
        held = [n for n in (str(STATE), "metrics.jsonl", WEIGHTS, CONFIG, "best") if (run_dir / n).exists()]
        if held and not overwrite:
            how = (f"resume it with --resume {run_dir}, " if (run_dir / STATE).exists()
                   else "it has no resumable state (state/ is gone), so --resume would start over; ")
            raise ConfigError(f"run dir {run_dir} already holds a run ({', '.join(held)}): {how}pick another "
                              f"output_dir (-o DIR), or replace it with --overwrite")

    # data first: a missing dataset fails before any other work
    d = recipe.data
    full = load_dataset(d.dataset, "train", d.data_dir, d.source, d.download)
    train_ds, val_ds = _split_val(full, d.val_size, recipe.seed)
    if d.limit is not None and d.limit < len(train_ds):  # a fixed random subset (by the seed)
        train_ds = train_ds.take(np.sort(np.random.default_rng(recipe.seed + 1).permutation(len(train_ds))[:d.limit]))
    try:
        test_ds: ArrayDataset | None = load_dataset(d.dataset, "test", d.data_dir, d.source, d.download)
    except DataError:
        test_ds = None
    n_classes = NUM_CLASSES[d.dataset]
    if len(train_ds.y) and (int(train_ds.y.min()) < 0 or int(train_ds.y.max()) >= n_classes):
        raise DataError(f"{d.dataset} training labels must be in [0, {n_classes}), got values in "
                        f"[{int(train_ds.y.min())}, {int(train_ds.y.max())}]")
    if env.distributed and len(train_ds) < recipe.batch_size:
        raise ConfigError(f"{len(train_ds)} training images make no full global batch of {recipe.batch_size} "
                          f"(data-parallel runs drop the last partial batch)")

    if resume is None and overwrite and run_dir.exists() and env.is_main:
        shutil.rmtree(run_dir)  # asked for explicitly
    if run_dir.exists() and env.is_main:
        remove_stale_temporaries(run_dir)  # what a killed write left behind
    created_group = dist_mod.init(env, dev)  # after every rank has its data: a missing file fails everywhere first
    try:
        return _train(recipe, resume, run_dir, dev, env, full, train_ds, val_ds, test_ds, progress)
    finally:
        dist_mod.shutdown(created_group)


def _prepare(recipe: Recipe, num_classes: int, model_args: dict[str, Any], dev: torch.device, env: dist_mod.DistEnv,
             setup: DeviceSetup) -> torch.nn.Module:
    """A model on its device, in its memory format, with synchronised BN when the recipe asks."""
    model = make_model(recipe, num_classes, model_args)
    if recipe.sync_bn and env.distributed:
        model = dist_mod.convert_sync_batchnorm(model, dev)
    model = model.to(dev)
    return model.to(memory_format=torch.channels_last) if setup.channels_last else model


def _train(recipe: Recipe, resume: str | Path | None, run_dir: Path, dev: torch.device, env: dist_mod.DistEnv,
           full: ArrayDataset, train_ds: ArrayDataset, val_ds: ArrayDataset | None, test_ds: ArrayDataset | None,
           progress: bool) -> Path:
    d = recipe.data
    num_classes = NUM_CLASSES[d.dataset]
    torch.manual_seed(recipe.seed)  # the same initial weights on every rank
    model_args = _model_args(recipe, train_ds)
    setup = device_setup(recipe, dev)
    model = _prepare(recipe, num_classes, model_args, dev, env, setup)
    optimizer = make_optimizer(recipe, model, dev)
    loader = TensorLoader(train_ds.x, train_ds.y, recipe.batch_size, dev, shuffle=True, augment=d.augment,
                          drop_last=len(train_ds) >= 2 * recipe.batch_size, seed=recipe.seed,
                          channels_last=setup.channels_last, rank=env.rank, world_size=env.world_size)
    method = METHODS[recipe.method.name]
    awp_cfg = recipe.method.awp
    awp = None
    if awp_cfg is not None:
        proxy = _prepare(recipe, num_classes, model_args, dev, env, setup)
        awp = AWP(model, proxy, awp_cfg.gamma, awp_cfg.proxy_lr, distributed=env.distributed)
    ema = make_ema(recipe, model)
    if recipe.compile:
        compile_model(model, recipe.compile_mode)
    rng = random.Random(recipe.seed)  # the AGAIN draws: the same on every rank
    again_on = isinstance(model, AgainModel)
    label_gate = again_on and model.gate_source == "label"
    ddp = dist_mod.wrap(model, dev, find_unused=again_on) if env.distributed else None
    label_names = list(full.classes)
    weights = ({"kind": "ema", **recipe.ema.model_dump(), "implementation": "timm.utils.ModelEmaV3"}
               if ema is not None else {"kind": "raw"})
    trained_on = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                  "world_size": env.world_size, "precision": setup.precision,
                  "compile": recipe.compile_mode if recipe.compile else False, "torch": torch.__version__}
    config = model_config(model, label_names, {"recipe": recipe.to_dict(), "training_data": full.describe(),
                                               "weights": weights, "trained_on": trained_on})

    main = env.is_main  # rank 0 owns the run directory
    if main:
        writable_dir(run_dir)  # one line when it cannot be created (under a file, /proc, no permission)
    counters: dict[str, Any] = {"epoch": 0, "step": 0, "best_val_robust": -1.0, "best_epoch": None}
    if resume is not None:
        if (run_dir / STATE).exists():
            counters, loader_state = load_state(run_dir, model, optimizer, rng, dev, ema)
            loader.load_state_dict(loader_state)
        if main:  # drop lines of epochs that will be re-run (written after the last saved state)
            kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] < counters["epoch"]]
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    elif main:
        atomic_write_text(run_dir / "recipe.yaml", recipes_mod.dump(recipe))
        (run_dir / "metrics.jsonl").touch()

    steps_per_epoch = len(loader)
    total = recipe.epochs * steps_per_epoch
    if main:
        log.info("%s %s: %d epochs of %d steps (global batch %d) on %s x %d, run dir %s",
                 "resuming" if resume is not None else "training", recipe.name, recipe.epochs, steps_per_epoch,
                 recipe.batch_size, dev, env.world_size, run_dir)
    monitor = {
        "val": _to_tensor(val_ds, recipe.eval.n_val) if val_ds is not None and recipe.eval.n_val else None,
        "test": _to_tensor(test_ds, recipe.eval.n_test) if test_ds is not None and recipe.eval.n_test else None,
        "train": _to_tensor(train_ds, recipe.eval.n_train) if recipe.eval.n_train else None,
    }
    eps = recipe.attack.eps
    published = ema.module if ema is not None else model
    bar = tqdm(total=total, initial=counters["step"], disable=None if progress and main else True, unit="step",
               dynamic_ncols=True, desc=recipe.name)
    for epoch in range(counters["epoch"] if not counters.get("stopped") else recipe.epochs, recipe.epochs):
        if env.distributed:
            torch.manual_seed(dist_mod.rank_seed(recipe.seed, env, epoch))
        model.train()
        p_again = recipe.model.again.schedule.probability(epoch, recipe.epochs) if again_on else 0.0
        use_awp = awp is not None and epoch >= awp_cfg.warmup_epochs
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        seen, again_batches, t0, window_t, window_n = 0, 0, time.time(), time.time(), 0
        gate_log = GateLog(dev) if again_on else None
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)  # the first step with a non-finite loss
        for i, (x, y) in enumerate(loader):
            step = counters["step"]
            for g in optimizer.param_groups:
                g["lr"] = recipe.optimizer.lr * lr_factor(recipe.lr_schedule, step / steps_per_epoch, recipe.epochs)
            again = again_on and rng.random() < p_again
            again_batches += again
            ctx = StepContext(model, recipe.attack, again, recipe.model.again.aux_weight,
                              recipe.method.beta if recipe.method.beta is not None else method.default_beta, setup.autocast,
                              recipe.method.label_smoothing)
            loss, logits, aux = train_step(ctx, method, optimizer, x, y, awp if use_awp else None, ema, step + 1, ddp)
            if gate_log is not None and again:
                gate_log.add(logits, aux, y, label_gate)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            window_n += len(y)
            counters["step"] = step + 1
            bar.update(1)
            if (i + 1) % recipe.log_every == 0 or i + 1 == steps_per_epoch:
                _check_finite(first_bad, epoch, steps_per_epoch, counters, recipe, env, dev)
            if main and ((i + 1) % recipe.log_every == 0 or i + 1 == steps_per_epoch):
                now = time.time()
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss_sum) / seen:.3f}",
                                acc=f"{float(correct) / seen:.3f}",
                                img_s=f"{env.world_size * window_n / max(now - window_t, 1e-9):.0f}")
                window_t, window_n = now, 0
        train_time = time.time() - t0
        loss_total, correct_total, seen = dist_mod.all_reduce_sum([float(loss_sum), float(correct), seen], dev)
        row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "p_again": round(p_again, 4),
                               "again_batches": again_batches, "train_loss": loss_total / max(1, seen),
                               "train_adv_acc": correct_total / max(1, seen), "train_time_s": round(train_time, 3),
                               "images_per_s": round(seen / max(train_time, 1e-9), 1)}
        if env.distributed:
            row["world_size"] = env.world_size
        if gate_log is not None:
            row.update(gate_log.row(env, dev))
        if (epoch + 1) % recipe.eval.every == 0 or epoch + 1 == recipe.epochs:
            row.update(_monitor(published, model if ema is not None else None, monitor, eps, recipe.eval.attack_steps,
                                epoch, env, dev))
        val_r = row.get("val_robust_acc")
        ev = recipe.eval
        if collapsed(val_r, counters["best_val_robust"], ev.co_ratio, ev.co_min_drop):
            row.update({FLAG: True, "co_best_val_robust": counters["best_val_robust"]})
            if ev.stop_on_co:
                counters["stopped"] = (f"catastrophic overfitting at epoch {epoch + 1} (held-out PGD accuracy "
                                       f"{val_r:.3f}, best {counters['best_val_robust']:.3f})")
        best = val_r is not None and val_r > counters["best_val_robust"]
        if best:
            counters.update(best_val_robust=val_r, best_epoch=epoch)
        counters["epoch"] = epoch + 1
        if main:
            log.info("epoch %d/%d: loss %.4f, train adv acc %.4f, val robust acc %s, %.0f img/s", epoch + 1,
                     recipe.epochs, row["train_loss"], row["train_adv_acc"],
                     f"{val_r:.4f}" if val_r is not None else "-", row["images_per_s"])
            append_jsonl(run_dir / "metrics.jsonl", row)
            if best:
                save_pretrained(published, run_dir / "best", {**config, "epoch": epoch, "selected_by": "val_robust_acc"})
            save_pretrained(published, run_dir, {**config, "epoch": epoch})
            save_state(run_dir, model, optimizer, rng, loader.state_dict(), counters, ema)
            _plot_curves(run_dir, read_jsonl(run_dir / "metrics.jsonl"))
        if counters.get("stopped"):
            break
    bar.close()
    if counters.get("stopped") and main:
        log.warning("%s: stopped: %s; the run is not to be published", recipe.name, counters["stopped"])
    return run_dir


def _check_finite(first_bad: torch.Tensor, epoch: int, steps_per_epoch: int, counters: dict[str, Any], recipe: Recipe,
                  env: dist_mod.DistEnv, dev: torch.device) -> None:
    """Stop with one line when a step's loss was NaN or infinite (on any rank); the run directory
    keeps the last complete epoch's checkpoint and state."""
    bad = int(first_bad)  # -1 when every loss on this rank was finite
    any_bad = dist_mod.all_reduce_sum([float(bad >= 0)], dev)[0] > 0 if env.distributed else bad >= 0
    if any_bad:
        where = (f"epoch {epoch + 1}, step {bad % steps_per_epoch + 1} (global step {bad + 1})" if bad >= 0
                 else f"epoch {epoch + 1} (on another rank)")
        kept = f"epoch {counters['epoch']}'s checkpoint is kept" if counters["epoch"] > 0 else "no checkpoint was written"
        raise TrainingError(f"the training loss became non-finite at {where} with optimizer.lr={recipe.optimizer.lr}: "
                            f"lower the learning rate; {kept}")


def _monitor(published: torch.nn.Module, raw: torch.nn.Module | None,
             monitor: dict[str, tuple[torch.Tensor, torch.Tensor] | None], eps: float, steps: int, epoch: int,
             env: dist_mod.DistEnv, dev: torch.device) -> dict[str, float]:
    """Clean and PGD accuracy on the monitoring sets, the published weights under the plain column
    names (``raw_*``: the raw weights when EMA is on). Each rank measures every
    ``world_size``-th image and the counts are summed, so every rank gets the same numbers."""
    names, counts = [], []
    for prefix, net in [("", published)] + ([("raw_", raw)] if raw is not None else []):
        for split, data in monitor.items():
            if data is None:
                continue
            x, y = data[0][env.rank::env.world_size], data[1][env.rank::env.world_size]
            names += [f"{prefix}{split}_clean_acc", f"{prefix}{split}_robust_acc", f"{prefix}{split}_n"]
            counts += [accuracy(net, x, y) * len(y), accuracy(net, x, y, eps=eps, steps=steps, seed=epoch) * len(y),
                       len(y)]
    gate_keys = ("ase_acc", "oracle_acc", "follows_wrong")
    held_out = monitor.get("val") or monitor.get("test")
    gated = isinstance(published, AgainModel) and held_out is not None
    if gated:  # is the classifier copying its gate? (againzoo.gate_diagnostics, clean held-out images)
        x, y = held_out[0][env.rank::env.world_size], held_out[1][env.rank::env.world_size]
        g = gate_figures(published, x, y, seed=epoch)
        counts += [g[k] * len(y) for k in gate_keys] + [len(y)]
    counts = dist_mod.all_reduce_sum(counts, dev)
    out = {}
    for i in range(0, len(names), 3):
        out[names[i]] = counts[i] / max(1.0, counts[i + 2])
        out[names[i + 1]] = counts[i + 1] / max(1.0, counts[i + 2])
    if gated:
        split = "val" if monitor.get("val") is not None else "test"
        tail, n = counts[len(names):-1], max(1.0, counts[-1])
        out.update({f"{split}_gate_{k}": v / n for k, v in zip(gate_keys, tail)})
    return out
