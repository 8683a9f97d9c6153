"""Every user mistake gets one line: a :class:`UserError` (exit 2 on the command line, no traceback,
nothing written). Recipes, checkpoints, API inputs and CLI arguments, one malformed input per case."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import againzoo
from againzoo import recipes
from againzoo.cli import app
from againzoo.errors import UserError
from againzoo.checkpoint import model_config, save_pretrained
from againzoo.pretrained import from_pretrained

from .conftest import tiny

# -- recipes -----------------------------------------------------------------------------------

RECIPE_TEXTS = {
    "unknown_top_key": ("name: r\nepochz: 3\n", "epochz"),
    "unknown_section_key": ("name: r\nattack: {epss: 8/255}\n", "epss"),
    "unknown_nested_key": ("name: r\nmodel: {again: {schedule: {ramp: 3}}}\n", "ramp"),
    "wrong_type": ("name: r\nepochs: ten\n", "epochs"),
    "negative_epochs": ("name: r\nepochs: -1\n", "epochs"),
    "zero_batch": ("name: r\nbatch_size: 0\n", "batch_size"),
    "huge_eps": ("name: r\nattack: {eps: 300/255}\n", "eps"),
    "eps_division_by_zero": ("name: r\nattack: {eps: 8/0}\n", "eps"),
    "eps_not_a_number": ("name: r\nattack: {eps: eight}\n", "eps"),
    "negative_lr": ("name: r\noptimizer: {lr: -0.1}\n", "lr"),
    "alpha_out_of_range": ("name: r\nmodel: {again: {alpha: 0.3}}\n", "alpha"),
    "unknown_method": ("name: r\nmethod: {name: fgsm_magic}\n", "method.name"),
    "unknown_precision": ("name: r\nprecision: fp8\n", "precision"),
    "milestones_beyond_epochs": ("name: r\nepochs: 10\nlr_schedule: {name: multistep, milestones: [75]}\n",
                                 "milestones"),
    "empty_file": ("", "expected a mapping"),
    "yaml_list": ("- name: r\n- epochs: 3\n", "expected a mapping"),
    "yaml_syntax": ("name: r\nattack: {eps: 8/255\n", "invalid YAML"),
    "missing_name": ("epochs: 3\n", "name"),
    "name_escapes_output_dir": ("name: ../../outside\n", "name"),
    "name_is_absolute": ("name: /tmp/outside\n", "name"),
    "negative_seed": ("name: r\nseed: -1\n", "seed"),
    "huge_seed": ("name: r\nseed: 99999999999999999999\n", "seed"),
    "negative_milestone": ("name: r\nepochs: 10\nlr_schedule: {name: multistep, milestones: [-5, 2]}\n", "milestones"),
    "eps_true": ("name: r\nattack: {eps: true}\n", "eps"),
    "lr_true": ("name: r\noptimizer: {lr: true}\n", "lr"),
    "empty_site_list": ("name: r\nmodel: {again: {layer: []}}\n", "layer"),
    "unknown_gate_source": ("name: r\nmodel: {again: {gate_source: oracle}}\n", "gate_source"),
    "zero_limit": ("name: r\ndata: {limit: 0}\n", "limit"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_TEXTS))
def test_malformed_recipe_is_one_line(tmp_path, case):
    text, needle = RECIPE_TEXTS[case]
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        recipes.load(path)
    assert needle in str(e.value) and "\n" not in str(e.value)


SET_OVERRIDES = {
    "set_without_equals": ("epochs", "key.path=value"),
    "set_unknown_path": ("attack.nope=1", "nope"),
    "set_through_a_value": ("epochs.x=1", "not a section"),
    "set_bad_value": ("epochs=abc", "epochs"),
    "set_bad_fraction": ("attack.eps=1/0", "eps"),
}


@pytest.mark.parametrize("case", sorted(SET_OVERRIDES))
def test_bad_set_override_is_one_line(case):
    item, needle = SET_OVERRIDES[case]
    with pytest.raises(UserError) as e:
        recipes.load("quickstart", [item])
    assert needle in str(e.value) and "\n" not in str(e.value)


def _cli(*args: str):
    res = CliRunner().invoke(app, list(args))
    return res


def _one_line_exit_2(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    out = res.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1 and out.startswith("error:"), out
    return out


def test_cli_train_recipe_not_found(tmp_path):
    out = _one_line_exit_2(_cli("train", str(tmp_path / "nope.yaml")))
    assert "not found" in out


def test_cli_train_unknown_dataset_writes_nothing(tmp_path):
    out = _one_line_exit_2(_cli("train", "quickstart", "--set", "data.dataset=imagenet21k",
                                "--set", f"output_dir={tmp_path}"))
    assert "imagenet21k" in out and not any(tmp_path.iterdir())


def test_cli_train_missing_data_dir_writes_nothing(tmp_path):
    out = _one_line_exit_2(_cli("train", "cifar10_resnet18_pgd_at", "--data-dir", str(tmp_path / "nodata"),
                                "--set", f"output_dir={tmp_path / 'runs'}"))
    assert "cifar10" in out and not (tmp_path / "runs").exists()


def test_cli_resume_of_a_non_run_dir(tmp_path):
    out = _one_line_exit_2(_cli("train", "--resume", str(tmp_path)))
    assert "not a run directory" in out


def test_cli_eval_of_a_missing_run_dir(tmp_path):
    out = _one_line_exit_2(_cli("eval", str(tmp_path / "missing_run")))
    assert "missing_run" in out


def test_cli_eval_unknown_suite(tiny_runs):
    out = _one_line_exit_2(_cli("eval", str(tiny_runs["again"]), "--suite", "heavy"))
    assert "heavy" in out


def test_cli_export_to_an_unwritable_path(tiny_runs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = _one_line_exit_2(_cli("export", str(tiny_runs["again"]), "-o", str(blocker / "model.onnx")))
    assert str(blocker) in out


# -- checkpoints -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt") / "good"
    model = tiny("again_resnet18", num_classes=10)
    save_pretrained(model, d, model_config(model, [str(i) for i in range(10)]))
    return d


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _weights(d: Path) -> Path:
    return d / "model.safetensors"


def _truncate(d):
    w = _weights(d)
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _zero(d):
    w = _weights(d)
    w.write_bytes(bytes(w.stat().st_size))


def _random(d):
    _weights(d).write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())


def _huge_header(d):
    w = _weights(d)
    w.write_bytes(struct.pack("<Q", 2**62) + w.read_bytes()[8:])


def _extra_tensor(d):
    from againzoo.io import load_tensors

    t, _ = load_tensors(_weights(d))
    save_file({**t, "extra.weight": torch.zeros(3)}, str(_weights(d)))


def _missing_tensor(d):
    from againzoo.io import load_tensors

    t, _ = load_tensors(_weights(d))
    t.pop(next(k for k in t if k.endswith("conv1.weight")))
    save_file(t, str(_weights(d)))


def _no_config(d):
    (d / "config.json").unlink()


def _bad_json(d):
    (d / "config.json").write_text("{not json")


def _config_edit(**kw):
    def edit(d):
        c = json.loads((d / "config.json").read_text())
        c.update(kw)
        (d / "config.json").write_text(json.dumps(c))
    return edit


def _config_not_a_mapping(d):
    (d / "config.json").write_text("[1, 2, 3]")

def _int_buffer(d):
    from againzoo.io import load_tensors

    t, _ = load_tensors(_weights(d))
    k = next(k for k in t if k.endswith("running_mean"))
    save_file({**t, k: t[k].long()}, str(_weights(d)))


def _nan_weight(d):
    from againzoo.io import load_tensors

    t, _ = load_tensors(_weights(d))
    k = next(k for k in t if k.endswith("conv1.weight"))
    t[k][0] = float("nan")
    save_file(t, str(_weights(d)))


def _bit_flip(d):
    """One flipped exponent bit: a weight of about 1e38 (finite) or inf; here forced to inf."""
    from againzoo.io import load_tensors

    t, _ = load_tensors(_weights(d))
    k = next(k for k in t if k.endswith("fc.weight"))
    t[k].view(-1)[0] = float("inf")
    save_file(t, str(_weights(d)))


def _again_null(d):
    c = json.loads((d / "config.json").read_text())
    c["again"] = None
    (d / "config.json").write_text(json.dumps(c))


def _plain_config(d):
    """A config that describes the plain backbone beside AGAIN weights."""
    from againzoo.factory import AGAIN_KWARGS

    c = json.loads((d / "config.json").read_text())
    c.update(architecture="resnet18_cifar", again=None)
    c["model_args"] = {k: v for k, v in c["model_args"].items() if k not in AGAIN_KWARGS}
    (d / "config.json").write_text(json.dumps(c))


CHECKPOINTS = {
    "truncated_weights": (_truncate, "safetensors"),
    "zeroed_weights": (_zero, "safetensors"),
    "random_bytes": (_random, "safetensors"),
    "huge_header_length": (_huge_header, "safetensors"),
    "extra_tensor": (_extra_tensor, "unexpected keys: extra.weight"),
    "missing_tensor": (_missing_tensor, "missing keys"),
    "config_missing": (_no_config, "no config.json"),
    "config_invalid_json": (_bad_json, "not valid JSON"),
    "config_not_a_mapping": (_config_not_a_mapping, "config.json"),
    "wrong_num_classes": (_config_edit(num_classes=100), "shape mismatch"),
    "unknown_architecture": (_config_edit(architecture="resnet9000"), "resnet9000"),
    "architecture_missing": (_config_edit(architecture=None), "architecture"),
    "int64_bn_buffer": (_int_buffer, "stored as torch.int64"),
    "nan_weight": (_nan_weight, "NaN or infinite"),
    "bit_flipped_weight": (_bit_flip, "NaN or infinite"),
    "again_null_with_again_architecture": (_again_null, "'again' is null"),
    "plain_config_for_again_weights": (_plain_config, "hold an ASE head"),
}


HASH_NEEDLES = ("its sha256", "differ from what")  # againzoo.integrity: a file changed after it was saved


def _strip_hashes(d):
    """The checkpoint as a tool that records no content hashes (or againzoo 0.1) would have written it."""
    from againzoo.integrity import WEIGHTS_KEY
    from againzoo.io import load_tensors

    t, _ = load_tensors(_weights(d))
    save_file(t, str(_weights(d)), metadata={"format": "pt"})
    c = json.loads((d / "config.json").read_text())
    c.pop(WEIGHTS_KEY, None)
    (d / "config.json").write_text(json.dumps(c))


@pytest.mark.parametrize("hashes", [True, False], ids=["hashed", "unhashed"])
@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_broken_checkpoint_is_one_line(good_ckpt, tmp_path, case, hashes):
    """Each damage is one line: a checkpoint with content hashes may be caught by them first (naming the
    file that changed); without them, by the specific check."""
    breaker, needle = CHECKPOINTS[case]
    d = _copy(good_ckpt, tmp_path / case)
    if not hashes:
        _strip_hashes(d)
    breaker(d)
    with pytest.raises(UserError) as e:
        from_pretrained(d)
    msg = str(e.value)
    assert "\n" not in msg and (needle in msg or hashes and any(h in msg for h in HASH_NEEDLES)), msg


class _Boom:
    def __reduce__(self):  # unpickling this would create a file: it must never happen
        return (Path.touch, (Path("/tmp/againzoo-unpickled"),))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.safetensors"])
def test_a_pickle_is_never_unpickled(tmp_path, name):
    marker = Path("/tmp/againzoo-unpickled")
    marker.unlink(missing_ok=True)
    d = tmp_path / "pickled"
    d.mkdir()
    (d / name).write_bytes(pickle.dumps({"state_dict": _Boom()}))
    (d / "config.json").write_text(json.dumps({"architecture": "resnet18_cifar", "num_classes": 10}))
    with pytest.raises(UserError):
        from_pretrained(d)
    assert not marker.exists()


def test_missing_source_is_one_line(tmp_path):
    with pytest.raises(UserError, match="neither a checkpoint directory nor a Hub repo id"):
        from_pretrained(tmp_path / "nope" / "deeper")


# -- API inputs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return tiny("again_resnet18", num_classes=10)


API_INPUTS = {
    "rank_3": (lambda: torch.rand(3, 16, 16), "4-D batch"),
    "rank_5": (lambda: torch.rand(1, 2, 3, 16, 16), "4-D batch"),
    "uint8": (lambda: torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), "dtype"),
    "int64": (lambda: torch.zeros(2, 3, 16, 16, dtype=torch.long), "dtype"),
    "one_channel": (lambda: torch.rand(2, 1, 16, 16), "3 channels"),
    "four_channels": (lambda: torch.rand(2, 4, 16, 16), "3 channels"),
    "nan": (lambda: torch.full((2, 3, 16, 16), float("nan")), "NaN"),
    "inf": (lambda: torch.full((2, 3, 16, 16), float("inf")), "inf"),
    "above_one": (lambda: torch.rand(2, 3, 16, 16) * 255, "[0, 1]"),
    "below_zero": (lambda: torch.rand(2, 3, 16, 16) - 0.5, "[0, 1]"),
    "empty_batch": (lambda: torch.rand(0, 3, 16, 16), "empty"),
    "numpy_array": (lambda: torch.rand(2, 3, 16, 16).numpy(), "torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(API_INPUTS))
def test_bad_inference_input_is_one_line(model, case):
    make, needle = API_INPUTS[case]
    model.eval()
    with pytest.raises(UserError) as e, torch.no_grad():
        model(make())
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_train_mode_batch_of_one(model):
    model.train()
    try:
        with pytest.raises(UserError, match="at least 2 images"):
            model(torch.rand(1, 3, 16, 16), targets=torch.tensor([3]))
    finally:
        model.eval()


@pytest.mark.parametrize("labels", [[0, 10], [-1, 2]], ids=["too_large", "negative"])
def test_out_of_range_labels(model, labels):
    model.train()
    try:
        with pytest.raises(UserError, match="labels must be in \\[0, 10\\)"):
            model(torch.rand(2, 3, 16, 16), targets=torch.tensor(labels))
    finally:
        model.eval()


def test_wrong_label_shape(model):
    model.train()
    try:
        with pytest.raises(UserError, match="targets of shape"):
            model(torch.rand(2, 3, 16, 16), targets=torch.tensor([[1, 2]]))
    finally:
        model.eval()


def test_unknown_zoo_model_name_is_one_line():
    with pytest.raises(UserError, match="'resnet9000' is not a timm model"):
        againzoo.create_model("again_resnet9000")


def test_cli_export_without_the_onnx_packages_names_the_extra(tiny_runs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    out = _one_line_exit_2(_cli("export", str(tiny_runs["again"]), "-o", str(tmp_path / "m.onnx")))
    assert "onnxscript" in out and "pip install 'againzoo[onnx]'" in out and not (tmp_path / "m.onnx").exists()


def test_againzoo_threads_must_be_a_positive_integer(monkeypatch):
    from againzoo.cpu import configure_threads

    monkeypatch.setenv("AGAINZOO_THREADS", "two")
    with pytest.raises(UserError, match="AGAINZOO_THREADS must be a positive integer"):
        configure_threads()


def test_thread_choice_leaves_busy_cores_alone(monkeypatch):
    import os

    from againzoo import cpu

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cpu.idle_threads(4, 0.1) == 4 and cpu.idle_threads(4, 1.2) == 3 and cpu.idle_threads(4, 3.9) == 1
    assert cpu.idle_threads(2, None) == 2  # unknown load: unchanged
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("AGAINZOO_THREADS", raising=False)
    monkeypatch.setattr(cpu, "busy_cores", lambda: 3.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        note = cpu.configure_threads()
        assert torch.get_num_threads() == 1 and "using 1 of 4 CPU threads" in note
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's choice wins
        torch.set_num_threads(4)
        assert cpu.configure_threads() is None and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


# -- the families of issue #23: every one ends in one line -------------------------------------

def test_unparsable_set_value_is_one_line():
    out = _one_line_exit_2(_cli("train", "quickstart", "--set", "epochs=[1,"))
    assert "--set epochs" in out and "YAML" in out


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "quantum"])
def test_unknown_device_is_one_line(tmp_path, device):
    out = _one_line_exit_2(_cli("train", "quickstart", "--device", device, "--set", f"output_dir={tmp_path}"))
    assert device in out


def test_training_into_a_non_resumable_run_dir_refuses_and_overwrite_replaces(tmp_path):
    from .conftest import TINY_RUN

    args = ["train", "quickstart", "--set", f"output_dir={tmp_path}"]
    for o in [*[o for o in TINY_RUN if not o.startswith("epochs")], "epochs=1"]:
        args += ["--set", o]
    assert _cli(*args).exit_code == 0
    run = tmp_path / "quickstart"
    import shutil

    shutil.rmtree(run / "state")
    (run / "metrics.jsonl").unlink()  # a user cleaning up space
    before = (run / "model.safetensors").read_bytes()
    out = _one_line_exit_2(_cli(*args))
    assert "no resumable state" in out and "--overwrite" in out
    assert (run / "model.safetensors").read_bytes() == before  # nothing was touched
    res = _cli(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (run / "state").exists() and (run / "metrics.jsonl").exists()


def test_train_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "quickstart").write_text("not a directory")
    out = _one_line_exit_2(_cli("train", "quickstart", "--set", f"output_dir={tmp_path}"))
    assert "is a file" in out


def test_a_nan_loss_stops_training_in_one_line_naming_the_step(tmp_path):
    out = _one_line_exit_2(_cli("train", "quickstart", "--set", "model.kwargs.width=4", "--set", "epochs=2",
                                "--set", "optimizer.lr=1e30", "--set", "log_every=2", "--set", f"output_dir={tmp_path}"))
    assert "non-finite" in out and "epoch 1, step" in out and "lower the learning rate" in out
    assert not (tmp_path / "quickstart" / "model.safetensors").exists()  # no NaN checkpoint was written


def test_export_refuses_to_replace_weights_with_onnx(tiny_runs, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"precious weights")
    out = _one_line_exit_2(_cli("export", str(tiny_runs["again"]), "-o", str(target)))
    assert "not an .onnx file" in out and "--overwrite" in out and target.read_bytes() == b"precious weights"
    out = _one_line_exit_2(_cli("export", str(tiny_runs["again"]), "-o", str(tmp_path)))
    assert "is a directory" in out


def test_export_opset_out_of_range(tiny_runs, tmp_path):
    out = _one_line_exit_2(_cli("export", str(tiny_runs["again"]), "-o", str(tmp_path / "m.onnx"), "--opset", "7"))
    assert "opset" in out and not (tmp_path / "m.onnx").exists()


def test_eval_output_that_is_not_an_eval_record(tiny_runs, tmp_path):
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    out = _one_line_exit_2(_cli("eval", str(tiny_runs["again"]), "-n", "4", "-o", str(tmp_path / "notes.json")))
    assert "not an eval.json" in out and json.loads((tmp_path / "notes.json").read_text()) == {"mine": 1}
    out = _one_line_exit_2(_cli("eval", str(tiny_runs["again"]), "-n", "4", "-o", str(tmp_path)))
    assert "is a directory" in out


def test_card_refuses_to_replace_a_foreign_file(tiny_runs, tmp_path):
    (tmp_path / "README.md").write_text("# my project\n")
    out = _one_line_exit_2(_cli("card", str(tiny_runs["again"]), "-o", str(tmp_path / "README.md")))
    assert "--overwrite" in out and (tmp_path / "README.md").read_text() == "# my project\n"


@pytest.mark.parametrize("args,needle", [
    (["-n", "0"], "n_examples"), (["-n", "-3"], "n_examples"), (["--batch-size", "0"], "batch_size"),
    (["--eps", "-8/255"], "eps"), (["--eps", "2"], "eps"),
    (["--eps", "-1", "--suite", "nope", "--data-dir", "/nonexistent"], "eps")])  # the budget is named first
def test_eval_counts_and_budgets_out_of_range(tiny_runs, args, needle):
    out = _one_line_exit_2(_cli("eval", str(tiny_runs["again"]), *args))
    assert needle in out


@pytest.mark.parametrize("args,needle", [(["-n", "0"], "number of images"), (["--lambda", "0"], "lambda"),
                                         (["--lambda", "1.5"], "lambda")])
def test_analysis_numbers_out_of_range(tiny_runs, tmp_path, args, needle):
    out = _one_line_exit_2(_cli("analyze", "asc", str(tiny_runs["again"]), str(tiny_runs["plain"]), *args,
                                "-o", str(tmp_path)))
    assert needle in out


def test_analysis_with_an_empty_log_or_a_corrupt_record(tiny_runs, tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    out = _one_line_exit_2(_cli("analyze", "curves", str(empty), "-o", str(tmp_path / "a")))
    assert "no epochs" in out
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "analysis.json").write_text("{torn")
    out = _one_line_exit_2(_cli("analyze", "curves", str(tiny_runs["again"]), "-o", str(tmp_path / "b")))
    assert "not valid JSON" in out and (tmp_path / "b" / "analysis.json").read_text() == "{torn"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 torn"], ids=["empty", "truncated"])
def test_a_damaged_data_pack_is_one_line(tmp_path, content):
    (tmp_path / "cifar10-jpeg75.npz").write_bytes(content)
    out = _one_line_exit_2(_cli("train", "cifar10_resnet18_pgd_at", "--data-dir", str(tmp_path),
                                "--set", f"output_dir={tmp_path / 'runs'}"))
    assert "cifar10-jpeg75.npz" in out and not (tmp_path / "runs").exists()


def test_a_damaged_decode_cache_is_rebuilt(tmp_path, monkeypatch):
    """The JPEG pack's decode cache is only a cache: a torn one is decoded again, not an error."""
    import numpy as np

    from againzoo.data import datasets

    monkeypatch.setenv("AGAINZOO_CACHE", str(tmp_path / "cache"))
    x = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    import io as _io

    from PIL import Image

    blobs = []
    for img in x:
        b = _io.BytesIO()
        Image.fromarray(img).save(b, format="JPEG", quality=75)
        blobs.append(np.frombuffer(b.getvalue(), dtype=np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(tmp_path / "cifar10-jpeg75.npz", classes=np.array([str(i) for i in range(10)]),
             test_jpeg=np.concatenate(blobs), test_offsets=offsets, test_labels=np.arange(4))
    first = datasets.load_dataset("cifar10", "test", tmp_path)
    cache = next((tmp_path / "cache").glob("*.npz"))
    cache.write_bytes(b"torn")
    again = datasets.load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(first.x, again.x) and len(again) == 4


@pytest.mark.parametrize("call,needle", [
    (lambda: againzoo.joint_loss(torch.zeros(2, 10), None, torch.tensor([0, 10])), "labels must be in [0, 10)"),
    (lambda: againzoo.joint_loss(torch.zeros(2, 10), torch.zeros(2, 10), torch.tensor([-1, 0])), "labels"),
    (lambda: againzoo.create_model("again_resnet18", num_classes=0), "num_classes"),
    (lambda: againzoo.create_model("again_resnet18", num_classes=-5), "num_classes"),
    (lambda: torch.hub.load(str(Path(__file__).resolve().parents[1]), "again_resnet18", source="local",
                            dataset="imagenet"), "dataset"),
    (lambda: torch.hub.load(str(Path(__file__).resolve().parents[1]), "again_resnet18", source="local",
                            pretrained=True, dataset="cifar100", num_classes=10), "100 classes"),
], ids=["joint_loss_label_too_large", "joint_loss_negative_label", "num_classes_zero", "num_classes_negative",
        "hub_unknown_dataset", "hub_dataset_vs_num_classes"])
def test_api_mistakes_are_user_errors(call, needle):
    with pytest.raises(UserError) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_call_after_unwrap_is_a_user_error():
    m = tiny()
    m.unwrap()
    with pytest.raises(UserError, match="unwrapped"):
        m(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("kw,needle", [({"eps": -8 / 255}, "eps"), ({"eps": 2.0}, "eps"),
                                       ({"y": torch.tensor([0, 11])}, "labels"), ({"batch_size": 0}, "batch_size")])
def test_evaluate_api_checks_its_arguments(kw, needle):
    from againzoo.evaluation import evaluate

    m = tiny().eval()
    args = {"x": torch.rand(2, 3, 32, 32), "y": torch.tensor([0, 1]), **kw}
    with pytest.raises(UserError) as e:
        evaluate(m, progress=False, checks=False, **{k: v for k, v in args.items()})
    assert needle in str(e.value)


def test_predictor_top_must_be_positive(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "export" / "predict.py"), str(tmp_path / "m.onnx"), "x.png",
                          "--top", "-1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--top" in res.stderr and len(res.stderr.strip().splitlines()) == 1

