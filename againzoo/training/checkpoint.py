"""Run-directory checkpoints and resume state.

``state/state.safetensors`` holds everything needed to continue after a kill: model weights,
the weight average (EMA) when there is one, optimiser tensors, the RNG streams (torch CPU/CUDA, loader generators, the AGAIN schedule's
Python RNG) and the counters, with the non-tensor part as JSON metadata. One file, written
atomically, so a resume sees either the previous epoch's state or this one's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import load_tensors, save_tensors

STATE = Path("state") / "state.safetensors"


def save_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rng: random.Random,
               loader_state: dict[str, torch.Tensor], counters: dict[str, Any], ema: nn.Module | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for k, v in loader_state.items():
        tensors[f"loader.{k}"] = v
    version, internal, gauss = rng.getstate()
    meta = {"counters": counters, "param_groups": opt["param_groups"], "opt_scalars": scalars,
            "py_rng": [version, list(internal), gauss]}
    save_tensors(run_dir / STATE, tensors, metadata={"againzoo_state": json.dumps(meta)})


def load_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rng: random.Random,
               device: torch.device, ema: nn.Module | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore in place; returns ``(counters, loader_state)``."""
    tensors, metadata = load_tensors(run_dir / STATE)
    meta = json.loads(metadata["againzoo_state"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        averaged = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not averaged:
            raise CheckpointError(f"{run_dir / STATE} holds no weight average, but the recipe has an ema section")
        ema.module.load_state_dict(averaged)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.to(device)
    for k, v in meta["opt_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = meta["py_rng"]
    rng.setstate((version, tuple(internal), gauss))
    loader = {k[7:]: v for k, v in tensors.items() if k.startswith("loader.")}
    return meta["counters"], loader
