"""The benchmarks run at a tiny size so they cannot rot (speed itself is not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, out: Path, *args: str) -> tuple[dict, str]:
    """Run benchmarks/<script> with ``args``; return its JSON and stdout."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text()), res.stdout


def test_train_throughput_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("train_throughput.py", tmp_path / "train.json", "--batch", "8", "--steps", "1",
                                 "--warmup", "0", "--attack-steps", "2")
    assert [r["variant"] for r in data["results"]] == ["pgd_at", "again_pgd_at", "again_pgd_at_ema"]
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in data["results"])
    assert "AGAIN overhead" in stdout and "EMA overhead" in stdout
    assert data["ema_overhead"] == data["results"][1]["images_per_s"] / data["results"][2]["images_per_s"] - 1
    # the same benchmark data-parallel under torchrun (2 gloo ranks), against the one-process JSON
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           str(ROOT / "benchmarks" / "train_throughput.py"), "--batch", "8", "--steps", "1", "--warmup", "0",
           "--attack-steps", "2", "--json", str(tmp_path / "ddp.json"), "--single", str(tmp_path / "train.json")]
    env = {**os.environ, "AGAINZOO_THREADS": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())["results"]
    assert all(r["world_size"] == 2 and r["total_images_per_s"] > r["images_per_s"] > 0 for r in ddp)
    assert all(r["scaling_efficiency"] == pytest.approx(
        r["total_images_per_s"] / (2 * s["images_per_s"])) for r, s in zip(ddp, data["results"]))
    assert res.stdout.count("total img/s") == 1  # rank 0 prints the table


def test_eval_throughput_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("eval_throughput.py", tmp_path / "eval.json", "--n", "4")
    rows = data["results"]
    assert [r["what"] for r in rows] == ["PGD-20 (joint loss)", "quick suite", "aa suite", "paper suite"]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert data["aa_over_quick"] > 0 and "official AutoAttack" in stdout


def test_inference_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("inference.py", tmp_path / "inf.json", "--iters", "2")
    rows = data["results"]
    assert {(r["runtime"], r["batch"]) for r in rows} >= {("torch eager (cpu)", 1), ("onnxruntime CPU", 1),
                                                           ("torch eager (cpu)", 64), ("onnxruntime CPU", 64)}
    assert "vs torch cpu" in stdout


def test_cpu_contention_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("cpu_contention.py", tmp_path / "cpu.json", "--set", "epochs=1",
                                 "--set", "model.kwargs.width=4", "--set", "data.val_size=50", "--set", "eval.n_val=20",
                                 "--set", "eval.n_test=20", "--set", "eval.n_train=20", "--set", "attack.steps=1")
    assert [r["threads"] for r in data["results"]] == ["idle cores (againzoo)", "all cores"]
    assert all(r["alone_s"] > 0 and r["busy_over_alone"] == pytest.approx(r["busy_s"] / r["alone_s"], rel=0.01)
               for r in data["results"])
    assert "busy/alone" in stdout
