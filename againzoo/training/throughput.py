"""Training throughput of a recipe: images/s of the trainer's own step on random data.

Used by ``benchmarks/train_throughput.py`` and by ``againzoo zoo build`` to size its work to a time
budget. Every batch takes the AGAIN path when the recipe enables AGAIN (the cost once the
AGAIN probability has ramped up), with the recipe's method, attack, batch, precision and EMA.
Under ``torchrun`` it times the data-parallel step (the recipe's ``batch_size`` split across the
ranks, gradients all-reduced by DDP) and reports this rank's and the job's images/s.
"""

from __future__ import annotations

import itertools
import platform
import resource
import time
from typing import Any, Callable

import torch

from ..adapter import AgainModel
from ..data import TensorLoader
from ..host_sync import HostSyncs
from ..recipes import Recipe
from . import distributed as dist_mod
from .methods import METHODS, StepContext
from ..runtime import resolve_device
from .trainer import compile_model, device_setup, make_ema, make_model, make_optimizer, train_step


def measure(recipe: Recipe, device: str | torch.device | None = None, input_size: tuple[int, int, int] = (3, 32, 32),
            num_classes: int = 10, steps: int = 3, warmup: int = 1, validate_values: bool = False,
            profile: Callable[..., dict[str, Any]] | None = None, loader: bool = False) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` ones; returns images/s (this process's and, under
    torchrun, the job's total), step time, peak memory and the host syncs of one more (untimed) step
    (``againzoo.host_sync``; None for a compiled model, whose graphs a dispatch mode would bypass). ``validate_values`` turns the model's per-step
    value checks back on (the trainer's default is off); ``profile(step, steps, device)``, when given,
    is called after the timing with a function that runs one more step, and its result is returned
    under ``profile``. ``loader``: every step takes its batch from the trainer's data loader (uint8
    images, crop and flip on the device, as training does) instead of reusing one ready batch; the
    difference is what overlapping data loading with compute could save at most."""
    env = dist_mod.env_from_launcher()
    dev = resolve_device(dist_mod.local_device(env, str(device) if device is not None else None))
    created = dist_mod.init(env, dev)
    try:
        return _measure(recipe, dev, env, input_size, num_classes, steps, warmup, validate_values, profile, loader)
    finally:
        dist_mod.shutdown(created)


def _measure(recipe: Recipe, dev: torch.device, env: dist_mod.DistEnv, input_size: tuple[int, int, int],
             num_classes: int, steps: int, warmup: int, validate_values: bool = False,
             profile: Callable[..., dict[str, Any]] | None = None, loader: bool = False) -> dict[str, Any]:
    batch = dist_mod.local_batch_size(recipe.batch_size, env)
    torch.manual_seed(0)
    model_args = {**recipe.model.kwargs, "pretrained_cfg_overlay": {"input_size": input_size}}
    model = make_model(recipe, num_classes, model_args).to(dev)
    if isinstance(model, AgainModel):
        model.validate_values = validate_values
    setup = device_setup(recipe, dev)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(recipe, model, dev)
    ema = make_ema(recipe, model)
    if recipe.compile:
        compile_model(model, recipe.compile_mode)
    ddp = dist_mod.wrap(model, dev, find_unused=isinstance(model, AgainModel)) if env.distributed else None
    x = torch.rand(batch, *input_size, device=dev)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batches = None
    if loader:  # the trainer's loader over random uint8 images, cycled
        data = TensorLoader(torch.randint(0, 256, (4 * batch, input_size[1], input_size[2], input_size[0]),
                                          dtype=torch.uint8).numpy(), y.repeat(4).cpu().numpy(), batch, dev,
                            shuffle=True, augment="crop_flip", drop_last=True, channels_last=setup.channels_last)
        batches = itertools.chain.from_iterable(itertools.repeat(data))

    def step(i: int) -> None:
        xb, yb = next(batches) if batches is not None else (x, y)
        train_step(ctx, method, opt, xb, yb, ema=ema, step=i, ddp=ddp)
    method = METHODS[recipe.method.name]
    beta = recipe.method.beta if recipe.method.beta is not None else method.default_beta
    ctx = StepContext(model, recipe.attack, recipe.model.again.enabled, recipe.model.again.aux_weight, beta, setup.autocast,
                      recipe.method.label_smoothing)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(warmup):
        step(i + 1)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if env.distributed:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i + 1)
    sync()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    rate = batch * steps / dt
    total = dist_mod.all_reduce_sum([rate], dev)[0]
    extra: dict[str, Any] = {"host_syncs_per_step": None}
    if not recipe.compile:
        with HostSyncs() as syncs:
            train_step(ctx, method, opt, x, y, ema=ema, step=warmup + steps + 1, ddp=ddp)
        extra["host_syncs_per_step"] = syncs.total
    if profile is not None:
        counter = {"step": warmup + steps + 1}

        def one_step() -> None:
            counter["step"] += 1
            train_step(ctx, method, opt, x, y, ema=ema, step=counter["step"], ddp=ddp)
        extra["profile"] = profile(one_step, max(1, min(steps, 5)), dev)
    return {**extra, "images_per_s": rate, "total_images_per_s": total, "world_size": env.world_size,
            "step_s": dt / steps, "peak_memory_mb": peak / 2**20,
            "memory_kind": "cuda max_allocated" if dev.type == "cuda" else "process max RSS",
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "precision": setup.precision}
