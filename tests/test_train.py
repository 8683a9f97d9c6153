"""End-to-end training: the quickstart recipe yields a robust model, and a SIGKILLed run resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from againzoo.data import load_dataset
from againzoo.runtime import accuracy
from againzoo.checkpoint import load_local
from againzoo.io import load_tensors, read_jsonl
from againzoo.training import train

TINY = ["model.kwargs.width=8", "epochs=3", "data.val_size=100", "eval.n_val=100", "eval.n_test=100",
        "eval.n_train=100", "attack.steps=2", "eval.attack_steps=3", "log_every=100"]


def digits_test():
    ds = load_dataset("digits", "test")
    return torch.from_numpy(ds.x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(ds.y)


@pytest.mark.slow
def test_quickstart_is_robust_where_standard_training_is_not(tmp_path):
    robust_dir = train("quickstart", overrides=[f"output_dir={tmp_path / 'a'}"], progress=False)
    plain_dir = train("quickstart", overrides=[f"output_dir={tmp_path / 'b'}", "method.name=standard",
                                               "model.again.enabled=false"], progress=False)
    x, y = digits_test()
    eps = 32 / 255  # the quickstart recipe's budget
    robust, plain = load_local(robust_dir), load_local(plain_dir)
    assert type(robust).__name__ == "AgainModel" and type(plain).__name__ == "ResNetCifar"
    r_acc = accuracy(robust, x, y, eps=eps, steps=20)
    p_acc = accuracy(plain, x, y, eps=eps, steps=20)
    assert accuracy(plain, x, y) > 0.9  # the twin learned the task...
    assert p_acc < 0.2  # ...but is not robust
    assert r_acc > p_acc + 0.3, (r_acc, p_acc)
    for name in ("model.safetensors", "config.json", "recipe.yaml", "metrics.jsonl", "curves.png",
                 "best/model.safetensors", "best/config.json", "state/state.safetensors"):
        assert (robust_dir / name).exists(), name
    config = json.loads((robust_dir / "config.json").read_text())
    assert config["architecture"] == "again_resnet18" and config["backbone"] == "resnet18_cifar"
    assert config["again"]["alpha"] == config["model_args"]["alpha"] == 0.6
    assert config["label_names"] == [str(i) for i in range(10)]
    rows = read_jsonl(robust_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(6)) and rows[-1]["p_again"] == 1.0
    best = json.loads((robust_dir / "best" / "config.json").read_text())
    assert best["selected_by"] == "val_robust_acc"
    assert rows[best["epoch"]]["val_robust_acc"] == max(r["val_robust_acc"] for r in rows)


def _cli(out, *extra):
    cmd = [sys.executable, "-m", "againzoo", "train", "quickstart", "--quiet", "--set", f"output_dir={out}"]
    for o in TINY:
        cmd += ["--set", o]
    return cmd + list(extra)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--set", "ema.decay=0.9"]], ids=["raw", "ema"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path / "ref", *extra), check=True, env=env, capture_output=True)
    ref = tmp_path / "ref" / "quickstart"

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = out / "quickstart"
    deadline = time.time() + 120
    while time.time() < deadline and len(read_jsonl(run / "metrics.jsonl")) < 1:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_jsonl(run / "metrics.jsonl")) < 3, "the run finished before it could be killed"

    res = subprocess.run([sys.executable, "-m", "againzoo", "train", "--resume", str(run), "--quiet"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # unbroken, no duplicates
    model = load_local(run)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    # RNG streams, optimiser, loader order (and the weight average) were restored: bit-identical to
    # the uninterrupted run, the saved weights (the average when EMA is on) and the full state alike
    for name in ("model.safetensors", "state/state.safetensors"):
        a, _ = load_tensors(ref / name)
        b, _ = load_tensors(run / name)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    if extra:
        assert any(k.startswith("ema.") for k in a)


def test_existing_run_dir_is_not_overwritten(tmp_path):
    train("quickstart", overrides=[f"output_dir={tmp_path}", *TINY, "epochs=1"], progress=False)
    from againzoo.errors import ConfigError
    import pytest

    with pytest.raises(ConfigError, match="already holds a run"):
        train("quickstart", overrides=[f"output_dir={tmp_path}", *TINY, "epochs=1"], progress=False)
