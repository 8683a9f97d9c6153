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
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_broken_checkpoint_is_one_line(good_ckpt, tmp_path, case):
    breaker, needle = CHECKPOINTS[case]
    d = _copy(good_ckpt, tmp_path / case)
    breaker(d)
    with pytest.raises(UserError) as e:
        from_pretrained(d)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


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
