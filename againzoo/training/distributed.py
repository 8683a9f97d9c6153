"""Data-parallel training under ``torchrun``: PyTorch's ``torch.distributed`` and
``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU), one process per device.

Semantics (README, "Several GPUs"): the recipe's ``batch_size`` is the global batch, split evenly
across the ranks; every rank draws the same shuffled order and the same augmentation parameters
for the whole global batch and keeps its own slice (so any number of processes sees the same
images, augmented the same way, as one process); the AGAIN per-batch draw is the same on every rank
(the same seeded Python RNG); HFF and the ASE label shuffle mix within each rank's own batch;
BatchNorm is per rank unless the recipe says ``sync_bn: true``. Rank 0 owns the run directory.

The method's training loss (one or two forward passes: TRADES and MART use two) runs as one
:class:`DDPLoss` forward, so DDP all-reduces the gradients once per step; the attacks craft with
the unwrapped model (their gradients are with respect to the inputs and are never synchronised).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (``rank 0 of 1`` when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_launcher(environ: dict[str, str] | None = None) -> DistEnv:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them."""
    e = os.environ if environ is None else environ
    try:
        world = int(e.get("WORLD_SIZE", "1"))
        rank = int(e.get("RANK", "0"))
        local = int(e.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return DistEnv(rank, world, local)


def local_device(env: DistEnv, device: str | None) -> str | None:
    """Under torchrun, ``cuda`` (or auto with CUDA present) means this rank's GPU, ``cuda:LOCAL_RANK``."""
    if not env.distributed:
        return device
    if device in (None, "auto"):
        return f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{env.local_rank}"
    return device


def init(env: DistEnv, device: torch.device, timeout_s: float = 600.0) -> bool:
    """Join the job's process group (NCCL on CUDA, gloo on CPU); True when this call created it
    (and :func:`shutdown` should end it)."""
    if not env.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(batch_size: int, env: DistEnv) -> int:
    if batch_size % env.world_size:
        raise ConfigError(f"batch_size={batch_size} is the global batch and must split evenly across "
                          f"{env.world_size} processes (use a multiple of {env.world_size})")
    return batch_size // env.world_size


def rank_seed(seed: int, env: DistEnv, epoch: int) -> int:
    """Each rank's torch seed for an epoch (attack random starts, HFF and ASE draws differ per rank)."""
    return int(np.random.SeedSequence([seed, env.rank, epoch]).generate_state(1)[0])


# -- collectives ---------------------------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum plain numbers over ranks (float64)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _coalesced(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    """Run ``collective`` in place on the tensors flattened into one buffer per dtype (one call
    instead of one per tensor), then copy the results back."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of ``module`` over ranks in place."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()

    def mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat /= world
    _coalesced([p.grad for p in module.parameters() if p.grad is not None], mean)


def broadcast_buffers(module: nn.Module) -> None:
    """Make every rank's buffers (BN running statistics) rank 0's."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    _coalesced(list(module.buffers()), lambda flat: dist.broadcast(flat, 0))


# -- synchronised BatchNorm ----------------------------------------------------------------------

class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm with batch statistics over all ranks, for CPU tensors (``nn.SyncBatchNorm`` accepts
    CUDA tensors only). Training mode: per-channel sum, sum of squares and count are all-reduced
    (float64, differentiably) and the global mean/variance normalise the local batch; running
    statistics take the global unbiased variance, like ``nn.SyncBatchNorm``. Eval mode: plain BN."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xd = x.double()
        count = torch.full((1,), x.numel() / c, dtype=torch.float64, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        y = (xd - mean.view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.double().view(shape) + self.bias.double().view(shape)
        return y.to(x.dtype)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    elif isinstance(module, _BatchNorm):
        raise ConfigError(f"sync_bn on CPU supports torch's BatchNorm layers; this model has {type(module).__name__} "
                          f"(on CUDA, timm's convert_sync_batchnorm handles it)")
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronised BN across ranks: timm's converter (``nn.SyncBatchNorm``, and timm's norm-act
    layers) on CUDA, :class:`CPUSyncBatchNorm` on CPU."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    return _convert_cpu(model)


# -- the DDP-wrapped loss ------------------------------------------------------------------------

class DDPLoss(nn.Module):
    """A step's loss as one module: ``DistributedDataParallel(DDPLoss(model))(fn)`` returns
    ``fn(model)``, so DDP sees one forward (of one or two model passes) and one backward per step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[nn.Module], Any]) -> Any:
        return fn(self.model)


def wrap(model: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """DDP over :class:`DDPLoss`; ``find_unused``: some steps leave parameters unused (the ASE head
    on batches without AGAIN)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    # buffers are broadcast once per step by train_step, not at every forward (the name of that
    # switch changed in torch 2.14; they hold the same values on every rank at construction)
    no_forward_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers")
    return DDP(DDPLoss(model), device_ids=[device] if device.type == "cuda" else None,
               find_unused_parameters=find_unused, **{no_forward_sync: False})
