"""Kill safety, proven: a training run is SIGKILLed at 10 random moments (half of them while a
checkpoint file is being written), resumed after each kill, and

* every checkpoint on disk is loadable at every kill (weights, best/, the resume state),
* no kill loses more than the epoch in progress,
* the final weights and state are bit-identical to an uninterrupted run (CPU, one thread).

Children are forked from a forkserver that has imported againzoo already, so a kill-and-resume
round costs the training work, not the ~4 s import of torch and timm.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

import pytest
import torch

from againzoo.checkpoint import load_local
from againzoo.io import load_tensors, read_jsonl
from againzoo.training.checkpoint import STATE

from .conftest import TINY_RUN

pytestmark = pytest.mark.slow  # ten SIGKILLs of a training run (~40 s): the slow tier

OVERRIDES = [*TINY_RUN, "epochs=6", "model.kwargs.width=4", "ema.decay=0.9"]
KILLS = 10


def _train(out: str, resume: str | None) -> None:
    torch.set_num_threads(1)
    from againzoo.training import train

    if resume:
        train(resume=resume, progress=False)
    else:
        train("quickstart", overrides=[*OVERRIDES, f"output_dir={out}"], progress=False)


@pytest.fixture(scope="module")
def ctx():
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["againzoo.training"])
    return c


def _run(ctx, out: Path, resume: Path | None = None):
    p = ctx.Process(target=_train, args=(str(out), str(resume) if resume else None))
    p.start()
    return p


def _check_loadable(run: Path) -> int:
    """Every checkpoint present loads; returns the epochs the resume state holds (0: none yet)."""
    if (run / "config.json").exists():
        load_local(run)
    if (run / "best" / "config.json").exists():
        load_local(run / "best")
    if not (run / STATE).exists():
        return 0
    _, meta = load_tensors(run / STATE)
    return json.loads(meta["againzoo_state"])["counters"]["epoch"]


def _writing(run: Path) -> bool:
    return any(p.name.endswith(".tmp") for p in run.rglob("*"))


def test_ten_sigkills_lose_at_most_an_epoch_each_and_change_nothing(ctx, tmp_path):
    ref = _run(ctx, tmp_path / "ref")
    t0 = time.time()
    ref.join(120)
    assert ref.exitcode == 0
    ref_dir = tmp_path / "ref" / "quickstart"
    full_s = time.time() - t0

    rng = random.Random(int(os.environ.get("AGAINZOO_KILL_SEED", "0")))
    run = tmp_path / "killed" / "quickstart"
    kills = during_write = 0
    p = _run(ctx, tmp_path / "killed")
    while kills < KILLS:
        at_write = kills % 2 == 1
        deadline = time.time() + rng.uniform(0.02, 0.4) * full_s / 2
        while p.is_alive() and time.time() < deadline + (full_s if at_write else 0):
            if at_write and run.exists() and _writing(run):
                break
            if not at_write and time.time() >= deadline:
                break
            time.sleep(0.001)
        if not p.is_alive():  # finished before this kill: start over from scratch is not the point
            break
        during_write += at_write and _writing(run)
        rows_before = len(read_jsonl(run / "metrics.jsonl"))
        os.kill(p.pid, 9)
        p.join()
        kills += 1
        assert _check_loadable(run) >= rows_before - 1, "a kill lost more than the epoch in progress"
        p = _run(ctx, tmp_path / "killed", resume=run if (run / "recipe.yaml").exists() else None)
    p.join(120)
    assert p.exitcode == 0
    assert kills == KILLS, f"the run finished after {kills} kills: it is too short for {KILLS}"
    assert during_write >= 1, "no kill landed during a checkpoint write"
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(6))
    for name in ("model.safetensors", "best/model.safetensors", "state/state.safetensors"):
        a, _ = load_tensors(ref_dir / name)
        b, _ = load_tensors(run / name)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
