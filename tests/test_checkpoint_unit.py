"""A checkpoint directory is written as one unit: a failure at every write boundary leaves a loadable,
complete pair (the previous one or the new one), and what a failed write left behind is cleaned up."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import againzoo
from againzoo import checkpoint, io
from againzoo.errors import OutputError

from .conftest import tiny

X = torch.rand(2, 3, 32, 32)


class Injector:
    """Counts the calls of every write primitive and fails the ``fail_at``-th one with an I/O error."""

    def __init__(self, monkeypatch, fail_at: int | None):
        self.calls, self.fail_at = 0, fail_at
        for owner, name in ((io, "save_file"), (Path, "write_text"), (os, "fsync"), (os, "rename"),
                            (os, "replace"), (io, "_exchange"), (shutil, "rmtree"), (Path, "mkdir")):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))

    def wrap(self, fn):
        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(errno.EIO, "injected I/O error")
            return fn(*args, **kwargs)
        return wrapped


def models():
    torch.manual_seed(0)
    old, new = tiny().eval(), tiny().eval()
    return old, new


def which(directory: Path, old, new) -> str:
    """'old' or 'new': the pair in ``directory`` loads, and its config describes the weights it sits beside."""
    m = againzoo.from_pretrained(directory)
    tag = json.loads((directory / "config.json").read_text())["tag"]
    out = m(X)
    for name, ref in (("old", old), ("new", new)):
        if torch.equal(out, ref(X)):
            assert tag == name, f"config.json says {tag}, the weights are {name}'s"
            return name
    raise AssertionError("the weights are neither the old nor the new model's")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_failure_at_every_write_boundary_leaves_a_complete_pair(tmp_path, monkeypatch, exchange):
    old, new = models()
    counter = Injector(monkeypatch, None)
    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    d = tmp_path / "ckpt"
    checkpoint.save_pretrained(old, d, {**checkpoint.model_config(old), "tag": "old"})
    (d / "eval.json").write_text("{}")  # a record of the old weights travels with them
    checkpoint.save_pretrained(old, tmp_path / "probe", {**checkpoint.model_config(old), "tag": "old"})
    counter.calls = 0  # the calls of one replacement of an existing checkpoint
    checkpoint.save_pretrained(new, tmp_path / "probe", {**checkpoint.model_config(new), "tag": "new"})
    boundaries = counter.calls
    assert boundaries >= 6
    outcomes = set()
    for k in range(1, boundaries + 1):
        monkeypatch.undo()
        if not exchange:
            monkeypatch.setattr(io, "_exchange", lambda a, b: False)
        shutil.rmtree(d)
        checkpoint.save_pretrained(old, d, {**checkpoint.model_config(old), "tag": "old"})
        (d / "eval.json").write_text("{}")
        Injector(monkeypatch, k)
        try:
            checkpoint.save_pretrained(new, d, {**checkpoint.model_config(new), "tag": "new"})
            failed = False
        except (OutputError, OSError):
            failed = True
        monkeypatch.undo()
        if exchange or d.exists():  # renameat2: the name always holds a complete pair
            got = which(d, old, new)
            assert not failed or got in ("old", "new")
        io.remove_stale_temporaries(tmp_path)  # what a start or resume does
        got = which(d, old, new)  # after the clean-up, the name holds a complete pair in every case
        outcomes.add(got)
        assert (d / "eval.json").exists() == (got == "old")  # the old record went with the old weights
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "probe") == ["ckpt"], list(tmp_path.iterdir())
    assert outcomes == {"old", "new"}


def test_a_run_directory_top_level_keeps_weights_before_config(tmp_path, monkeypatch):
    """A directory that holds other files (a run directory) gets the two files one by one, weights
    first. A failure between them leaves the previous config beside the new weights: the content hash
    in config.json says so on load (one line), and the next save makes the pair whole again."""
    from againzoo.errors import CheckpointError

    old, new = models()
    (tmp_path / "metrics.jsonl").write_text("")
    checkpoint.save_pretrained(old, tmp_path, {**checkpoint.model_config(old), "tag": "old"})
    with monkeypatch.context() as mp:
        mp.setattr(checkpoint, "atomic_write_json", lambda *a, **k: (_ for _ in ()).throw(OutputError("full")))
        with pytest.raises(OutputError):
            checkpoint.save_pretrained(new, tmp_path, {**checkpoint.model_config(new), "tag": "new"})
    with pytest.raises(CheckpointError, match="its sha256 .*config.json records") as e:
        againzoo.from_pretrained(tmp_path)
    assert "\n" not in str(e.value) and (tmp_path / "metrics.jsonl").exists()
    checkpoint.save_pretrained(new, tmp_path, {**checkpoint.model_config(new), "tag": "new"})
    assert torch.equal(againzoo.from_pretrained(tmp_path)(X), new(X))


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    old, new = models()
    d = tmp_path / "best"
    checkpoint.save_pretrained(old, d)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io, "save_file", full)
    with pytest.raises(OutputError, match="no space left") as e:
        checkpoint.save_pretrained(new, d)
    assert "\n" not in str(e.value)
    assert torch.equal(againzoo.from_pretrained(d)(X), old(X))
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_stale_temporaries_are_removed_when_a_run_resumes(tmp_path):
    from againzoo.training import train

    from .conftest import TINY_RUN

    over = [o for o in TINY_RUN if not o.startswith("epochs")] + ["epochs=1", f"output_dir={tmp_path}"]
    run = train("quickstart", overrides=over, progress=False)
    (run / ".model.safetensors.abc.tmp").write_bytes(b"torn")
    (run / ".best.tmp-123").mkdir()
    (run / "state" / ".state.safetensors.x.tmp").write_bytes(b"torn")
    train(resume=run, overrides=["epochs=2"], progress=False)
    assert not [p for p in run.rglob(".*")], list(run.rglob(".*"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
