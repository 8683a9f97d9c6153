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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
