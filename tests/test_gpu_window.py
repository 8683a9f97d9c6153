"""The GPU window's one command (`scripts/gpu_window.sh`), rehearsed on CPU: a window is 15
minutes of device time, so its script must not fail on something a CPU can find first."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_window.sh"


@pytest.mark.slow  # a fresh pytest collecting two modules (~11 s)
def test_the_smoke_step_collects_its_tests():
    """The smoke step runs slow-tier modules: without its own -m, the default `-m 'not slow'`
    would deselect them all, pytest would exit 5 and the window would stop at its first step."""
    (args,) = re.findall(r"python3 -m pytest (.*?) \|\| exit 1", SCRIPT.read_text())
    res = subprocess.run([sys.executable, "-m", "pytest", *shlex.split(args), "--collect-only"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    collected = int(re.search(r"(\d+) tests? collected", res.stdout).group(1))
    assert collected >= 10 and "deselected" not in res.stdout


@pytest.mark.slow
def test_the_window_script_runs_on_cpu_and_returns_few_files(tmp_path):
    """Benchmarks merged into one JSON after each step, the eval benchmark against the training
    rows, no zoo build with ZOO=0, and at most 8 files under $OUT (what the device hands back)."""
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OUT": str(out), "DEVICE": "cpu", "WHEELS": "0", "SMOKE": "0", "PROFILE": "0", "ZOO": "0",
           "EVAL_N": "4", "BENCH": "--width 4 --px 16 --batch 8 --steps 1 --warmup 0 --attack-steps 2"}
    res = subprocess.run(["bash", str(SCRIPT), "300"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["benchmarks.json", "log"]
    bench = json.loads((out / "benchmarks.json").read_text())
    assert set(bench) == {"train_throughput", "eval_throughput"}
    assert [r["variant"] for r in bench["train_throughput"]["results"]] == ["pgd_at", "again_pgd_at", "again_pgd_at_ema"]
    ev = bench["eval_throughput"]
    assert (ev["config"]["width"], ev["config"]["px"]) == (4, 16)  # the training benchmark's model size
    assert [r["what"] for r in ev["results"]][-1] == "quick suite"
    assert [c["variant"] for c in ev["vs_train"]] == ["pgd_at", "again_pgd_at", "again_pgd_at_ema"]
    log = (out / "log").read_text()
    assert "AGAIN overhead" in log and "training step" in log and "zoo build" not in log
