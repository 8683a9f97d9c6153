"""Data-parallel training under torchrun, on CPU with gloo: two processes train one run, the first
step equals one process's step with the same global batch, a killed rank ends the job, and the
run resumes with another number of processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import againzoo
from againzoo import from_pretrained
from againzoo.data import TensorLoader
from againzoo.io import load_tensors, read_jsonl
from againzoo.training import train
from againzoo.training.distributed import DistEnv, env_from_launcher, local_batch_size

pytestmark = pytest.mark.slow  # multi-process runs (~1 min): the slow tier

ROOT = Path(__file__).resolve().parents[1]
N_DIGITS_TRAIN = 1497  # the embedded digits training split
ONE_STEP = ["model.kwargs.width=8", "epochs=1", "batch_size=64", f"data.val_size={N_DIGITS_TRAIN - 64}",
            "data.augment=crop_flip", "eval.n_val=0", "eval.n_test=0", "eval.n_train=0",
            "attack.steps=2", "attack.random_start=false", "model.again.schedule.end=0",
            "lr_schedule.name=constant", "optimizer.lr=0.5", "sync_bn=true",
            "precision=fp32"]  # an fp32 comparison within 1e-5 (auto is bf16 on CPUs with native bf16)
SMALL = ["model.kwargs.width=8", "data.val_size=100", "eval.n_val=32", "eval.n_test=32", "eval.n_train=32",
         "attack.steps=2", "eval.attack_steps=2", "log_every=1000"]


def torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
            "-m", "againzoo", "train", *args]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**e, "AGAINZOO_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_launcher_environment_and_global_batch():
    assert env_from_launcher({}) == DistEnv(0, 1, 0)
    assert env_from_launcher({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(1, 4, 1)
    assert local_batch_size(128, DistEnv(0, 4, 0)) == 32
    with pytest.raises(Exception, match="batch_size=100 is the global batch and must split evenly across 3"):
        local_batch_size(100, DistEnv(0, 3, 0))
    with pytest.raises(Exception, match="RANK=2 is not in 0..WORLD_SIZE-1"):
        env_from_launcher({"RANK": "2", "WORLD_SIZE": "2"})


def test_rank_shards_make_up_the_global_batch_with_its_augmentation():
    """Every rank gets its slice of the same global batch, augmented as in one process."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = np.arange(40) % 10
    kw = dict(batch_size=8, shuffle=True, augment="crop_flip", seed=3)
    whole = list(TensorLoader(x, y, **kw))
    shards = [list(TensorLoader(x, y, rank=r, world_size=4, **kw)) for r in range(4)]
    assert len(whole) == len(shards[0]) == 5
    for i, (xb, yb) in enumerate(whole):
        assert torch.equal(torch.cat([s[i][0] for s in shards]), xb)
        assert torch.equal(torch.cat([s[i][1] for s in shards]), yb)


def test_two_processes_take_the_same_first_step_as_one(tmp_path):
    """sync_bn on, no AGAIN or attack randomness: 2 gloo processes == 1 process within 1e-5,
    and the 2-process run is one run directory that from_pretrained loads."""
    one = train("quickstart", overrides=[f"output_dir={tmp_path / 'one'}", *ONE_STEP], progress=False)
    proc = subprocess.run(torchrun(2, "quickstart", "--quiet", *sets([f"output_dir={tmp_path / 'two'}", *ONE_STEP])),
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run dir:") == 1  # rank 0 speaks for the job
    two = tmp_path / "two" / "quickstart"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["quickstart"]
    a, _ = load_tensors(one / "model.safetensors")
    b, _ = load_tensors(two / "model.safetensors")
    assert a.keys() == b.keys()
    moved = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved < 1e-5, moved
    # the step really moved the weights (so the comparison is not of two untouched initialisations)
    fresh = train("quickstart", overrides=[f"output_dir={tmp_path / 'zero'}", *ONE_STEP, "optimizer.lr=1e-9"],
                  progress=False)
    z, _ = load_tensors(fresh / "model.safetensors")
    assert max(float((a[k] - z[k]).abs().max()) for k in a if a[k].is_floating_point()) > 1e-2
    rows = read_jsonl(two / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["world_size"] == 2
    model = from_pretrained(two)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_rank_ends_the_job_and_the_run_resumes_on_one_process(tmp_path):
    out = tmp_path / "runs"
    job = subprocess.Popen(torchrun(2, "quickstart", "--quiet", *sets([f"output_dir={out}", "epochs=4", *SMALL])),
                           env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "quickstart" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.2)
    workers = _children(job.pid)
    assert len(workers) == 2, workers
    time.sleep(1.0)  # into epoch 2
    os.kill(workers[1], signal.SIGKILL)
    t0 = time.time()
    job.communicate(timeout=60)
    ended = time.time() - t0
    assert job.returncode != 0
    assert ended < 10, f"the job took {ended:.1f} s to end after a rank was killed"
    done = read_jsonl(metrics)
    assert 1 <= len(done) < 4
    proc = subprocess.run([sys.executable, "-m", "againzoo", "train", "--quiet", "--resume", str(out / "quickstart")],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(metrics)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert all(r.get("world_size") == 2 for r in rows[:len(done)])
    assert "world_size" not in rows[-1]
    from_pretrained(out / "quickstart")


def test_missing_dataset_fails_under_torchrun_in_one_line(tmp_path):
    proc = subprocess.run(torchrun(2, "cifar10_resnet18_pgd_at", "--quiet", "--data-dir", str(tmp_path / "nowhere"),
                                   *sets([f"output_dir={tmp_path}"])),
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # Each rank prints the same line, but torchrun stops the other rank (SIGTERM) as soon as the
    # first one exits, which may be before it has printed: one line or two, never a traceback of ours.
    assert 1 <= len(errors) <= 2 and all("nowhere" in e and e == errors[0] for e in errors), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr.split("error:")[0]
    package = str(Path(againzoo.__file__).parent)
    assert f'File "{package}' not in proc.stderr, proc.stderr[-2000:]
