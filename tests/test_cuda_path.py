"""The CUDA training path rehearsed on CPU: bf16 autocast, channels_last and the fused optimiser
(what `precision: auto` and the defaults pick on a GPU) through the real trainer, for every method,
with AGAIN, AWP and the weight average, so a GPU window is never spent on a typo."""

import math

import pytest
import torch

from againzoo import recipes
from againzoo.io import load_tensors, read_jsonl
from againzoo.training import train
from againzoo.training.trainer import device_setup, make_optimizer

from .conftest import TINY_RUN

pytestmark = pytest.mark.slow  # every method through the CUDA path on CPU (~40 s): the slow tier

CUDA_LIKE = ["precision=bf16", "channels_last=true", "optimizer.fused=true"]


def test_defaults_pick_the_fast_path_on_cuda_and_on_cpus_with_native_bf16(monkeypatch):
    from againzoo import cpu as cpu_mod

    r = recipes.load("quickstart")
    for native, expected in (("0", ("fp32", False)), ("1", ("bf16", True))):
        monkeypatch.setenv("AGAINZOO_CPU_BF16", native)
        cpu_mod.native_bf16.cache_clear()
        cpu = device_setup(r, torch.device("cpu"))
        assert (cpu.precision, cpu.channels_last) == expected
    cpu_mod.native_bf16.cache_clear()
    cuda = device_setup(r, torch.device("cuda"))
    assert (cuda.precision, cuda.channels_last) == ("bf16", True)
    opt = make_optimizer(r, torch.nn.Linear(2, 2), torch.device("cpu"))
    assert not opt.defaults.get("fused") and opt.defaults.get("foreach") is False
    r = recipes.load("quickstart", CUDA_LIKE)
    cpu = device_setup(r, torch.device("cpu"))
    assert (cpu.precision, cpu.channels_last) == ("bf16", True)
    with cpu.autocast():
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.bfloat16
    assert make_optimizer(r, torch.nn.Linear(2, 2), torch.device("cpu")).defaults["fused"] is True


@pytest.mark.parametrize("method", [
    ["method.name=pgd_at", "ema.decay=0.9", "method.label_smoothing=0.1"],
    ["method.name=trades"],
    ["method.name=mart", "method.awp.gamma=0.005"],
    ["method.name=fgsm_rs", "model.again.enabled=false"],
], ids=["again_pgd_at_ema_ls", "again_trades", "again_mart_awp", "fgsm_rs"])
def test_bf16_channels_last_fused_training_runs_every_method(tmp_path, method):
    run = train("quickstart", overrides=[f"output_dir={tmp_path}", *TINY_RUN, "epochs=2", *CUDA_LIKE, *method],
                progress=False)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in rows)
    assert all(0 <= r["val_robust_acc"] <= r["val_clean_acc"] <= 1 for r in rows)
    tensors, _ = load_tensors(run / "model.safetensors")  # autocast leaves the stored weights fp32
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    first, _ = load_tensors(run / "best" / "model.safetensors")
    assert set(first) == set(tensors)
