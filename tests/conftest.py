from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import againzoo  # noqa: F401  (registers the backbones)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AGAINZOO_DATA", ROOT.parent / "shared" / "data"))
LOSSLESS = SHARED_DATA / "cifar10-lossless-subset.npz"

if "OMP_NUM_THREADS" not in os.environ:  # CI: both cores; set OMP_NUM_THREADS=1 when sharing the machine
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# CLI commands run in-process keep this count (againzoo/cpu.py would otherwise sample the load)
os.environ.setdefault("AGAINZOO_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def real_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 256 lossless CIFAR-10 test images as float [0, 1] NCHW, and their labels."""
    if not LOSSLESS.exists():
        pytest.skip(f"real CIFAR-10 images not found at {LOSSLESS} (set AGAINZOO_DATA)")
    d = np.load(LOSSLESS)
    x = torch.from_numpy(d["x_test"][:256]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(d["y_test"][:256])


def tiny(name: str = "again_resnet18", **kw):
    """A slim AGAIN model for fast tests."""
    widths = {"again_resnet18": {"width": 8}, "again_preactresnet18": {"width": 8},
              "again_wrn34_10": {"widen_factor": 1}, "again_vgg16": {"width_mult": 0.125}}
    return againzoo.create_model(name, **{**widths.get(name, {}), **kw})


TINY_RUN = ["model.kwargs.width=8", "epochs=3", "data.val_size=100", "eval.n_val=50", "eval.n_test=50",
            "eval.n_train=50", "attack.steps=3", "eval.attack_steps=3", "log_every=1000"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Two small digits runs shared by the evaluation tests: AGAIN-PGD-AT and a plain PGD-AT twin."""
    from againzoo.training import train

    root = tmp_path_factory.mktemp("runs")
    again = train("quickstart", overrides=[f"output_dir={root / 'again'}", *TINY_RUN], progress=False)
    plain = train("quickstart", overrides=[f"output_dir={root / 'plain'}", *TINY_RUN, "model.again.enabled=false"],
                  progress=False)
    from againzoo.evaluation import evaluate_checkpoint

    # a cheap eval.json for the tests that need an evaluated checkpoint (hub, cards, export)
    evaluate_checkpoint(str(again), "quick", n_examples=16, progress=False, n_check=16,
                        aa_budget={"n_iter": 5, "n_targets": 2, "n_queries": 10})
    return {"again": again, "plain": plain}


@pytest.fixture(scope="session")
def digits_test():
    from againzoo.data import load_dataset

    ds = load_dataset("digits", "test")
    return torch.from_numpy(ds.x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(ds.y)
