"""Training throughput of a recipe: images/s of the trainer's own step on random data.

Used by ``benchmarks/train_throughput.py`` and by ``againzoo zoo build`` to size its work to a time
budget. Every batch takes the AGAIN path when the recipe enables AGAIN (the cost once the
AGAIN probability has ramped up), with the recipe's method, attack, batch, precision and EMA.
"""

from __future__ import annotations

import platform
import resource
import time
from typing import Any

import torch

from ..recipes import Recipe
from .methods import METHODS, StepContext
from .trainer import device_setup, make_ema, make_model, make_optimizer, resolve_device, train_step


def measure(recipe: Recipe, device: str | torch.device | None = None, input_size: tuple[int, int, int] = (3, 32, 32),
            num_classes: int = 10, steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` ones; returns images/s, step time, peak memory."""
    dev = resolve_device(str(device) if device is not None else None)
    torch.manual_seed(0)
    model_args = {**recipe.model.kwargs, "pretrained_cfg_overlay": {"input_size": input_size}}
    model = make_model(recipe, num_classes, model_args).to(dev)
    setup = device_setup(recipe, dev)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(recipe, model, dev)
    ema = make_ema(recipe, model)
    x = torch.rand(recipe.batch_size, *input_size, device=dev)
    y = torch.randint(0, num_classes, (recipe.batch_size,), device=dev)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    method = METHODS[recipe.method.name]
    beta = recipe.method.beta if recipe.method.beta is not None else method.default_beta
    ctx = StepContext(model, recipe.attack, recipe.model.again.enabled, recipe.model.again.aux_weight, beta, setup.autocast,
                      recipe.method.label_smoothing)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(warmup):
        train_step(ctx, method, opt, x, y, ema=ema, step=i + 1)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(ctx, method, opt, x, y, ema=ema, step=warmup + i + 1)
    sync()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"images_per_s": recipe.batch_size * steps / dt, "step_s": dt / steps, "peak_memory_mb": peak / 2**20,
            "memory_kind": "cuda max_allocated" if dev.type == "cuda" else "process max RSS",
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "precision": setup.precision}
