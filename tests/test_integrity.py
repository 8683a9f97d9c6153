"""Records bound to the weights they describe: content hashes written on save, verified on load, named in
every record; and the last mistakes that were tracebacks or silent, each one line now."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from typer.testing import CliRunner

import againzoo
from againzoo import io as io_mod
from againzoo.checkpoint import load_local, save_pretrained
from againzoo.cli import app
from againzoo.errors import CheckpointError, ConfigError, OutputError
from againzoo.integrity import META_DIGEST, WEIGHTS_KEY, sha256_of

from .conftest import ROOT, TINY_RUN, tiny


def _one_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    out = res.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1 and out.startswith("error:"), out
    return out


@pytest.fixture
def ckpt(tmp_path):
    model = tiny(width=4).eval()
    return save_pretrained(model, tmp_path / "ckpt"), model


def test_save_records_both_hashes_and_a_clean_load_passes(ckpt):
    d, model = ckpt
    config = json.loads((d / "config.json").read_text())
    assert config[WEIGHTS_KEY] == sha256_of(d / "model.safetensors")
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert len(meta[META_DIGEST]) == 64 and json.loads(meta["model_config"])["architecture"] == config["architecture"]
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_local(d)(x), model(x))


def _tensor_data_offset(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_a_flipped_byte_in_the_tensor_data_is_caught_naming_the_file(ckpt):
    d, _ = ckpt
    w = d / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[_tensor_data_offset(w) + 100] ^= 0x40  # header intact: the file still parses
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: its sha256 .* is not the .*config\.json records"):
        load_local(d)


def test_an_edited_mean_is_caught_naming_the_key(ckpt):
    d, _ = ckpt
    config = json.loads((d / "config.json").read_text())
    config["normalization"]["mean"][0] += 0.01
    config["model_args"]["norm_mean"][0] += 0.01
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: model_args\.norm_mean, normalization\.mean differ from "
                                              r"what .*model\.safetensors was saved with"):
        load_local(d)
    with pytest.raises(CheckpointError) as e:
        load_local(d)
    assert len(str(e.value).splitlines()) == 1


def test_a_checkpoint_saved_before_the_hashes_loads_with_a_note(ckpt, caplog):
    from safetensors.torch import load_file, save_file

    d, model = ckpt
    w = d / "model.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "pt"})  # as againzoo 0.1 wrote it
    config = json.loads((d / "config.json").read_text())
    del config[WEIGHTS_KEY]
    (d / "config.json").write_text(json.dumps(config))
    x = torch.rand(2, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="againzoo.checkpoint"):
        assert torch.equal(load_local(d)(x), model(x))
    assert "carries no content hashes" in caplog.text


def test_an_eval_json_of_other_weights_warns_on_load_and_the_card_refuses_it(ckpt, tmp_path):
    from againzoo.card import model_card

    d, _ = ckpt
    other = save_pretrained(tiny(width=4), tmp_path / "other")
    record = {"suite": "quick", "clean_acc": 0.5, "worst_case_acc": 0.2, WEIGHTS_KEY: sha256_of(other / "model.safetensors")}
    (d / "eval.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="eval.json describes other weights .* its numbers are stale"):
        load_local(d)
    with pytest.raises(CheckpointError, match=r"eval\.json describes weights with sha256 .* but .*model\.safetensors has"):
        model_card(d)


def test_a_stale_registry_sha256_is_refused_by_the_table_and_the_loader(tmp_path, monkeypatch):
    from againzoo.card import models_table
    from againzoo.registry import PretrainedEntry, register

    folder = save_pretrained(tiny(width=4), tmp_path / "zoo" / "m")
    registry = tmp_path / "registry.json"
    monkeypatch.setenv("AGAINZOO_REGISTRY", str(registry))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    register(PretrainedEntry("again_resnet18", "cifar10", "nobody/none", "ab" * 32, local="zoo/m/model.safetensors"),
             registry)
    with pytest.raises(CheckpointError, match=r"registry's sha256 for again_resnet18 .* is not that of .*model\.safetensors"):
        models_table(registry)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        againzoo.create_model("again_resnet18", pretrained=True)
    assert folder.exists()


def test_eval_and_export_records_name_the_weights(tiny_runs, tmp_path):
    import onnx

    from againzoo.onnx import export_checkpoint

    best = tiny_runs["again"] / "best"
    digest = sha256_of(best / "model.safetensors")
    assert json.loads((best / "eval.json").read_text())[WEIGHTS_KEY] == digest
    export_checkpoint(str(tiny_runs["again"]), tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props[WEIGHTS_KEY] == digest


def test_a_full_disk_while_writing_weights_is_one_line(tmp_path, monkeypatch):
    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(io_mod, "save_file", full)
    with pytest.raises(OutputError, match="no space left on the device writing .*ckpt"):
        save_pretrained(tiny(width=4), tmp_path / "ckpt")
    out = _one_line(CliRunner().invoke(app, ["train", "quickstart", "--set", f"output_dir={tmp_path / 'runs'}",
                                             *[f"--set={o}" for o in TINY_RUN], "--set", "epochs=1"]))
    assert "no space left on the device" in out


@pytest.mark.parametrize("where", ["under_a_file", "under_proc"])
def test_train_into_a_folder_that_cannot_be_created_is_one_line(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "runs"
    else:
        target = Path("/proc/againzoo-no/runs")
    out = _one_line(CliRunner().invoke(app, ["train", "quickstart", "-o", str(target), "--set", "epochs=1"]))
    assert "cannot write into" in out and str(target) in out


def test_export_into_proc_is_one_line(tiny_runs):
    out = _one_line(CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", "/proc/againzoo.onnx"]))
    assert "/proc/againzoo.onnx" in out


def test_resume_with_another_recipe_is_one_line(tmp_path):
    from againzoo.training import train

    run = train("quickstart", overrides=[f"output_dir={tmp_path}", *TINY_RUN, "epochs=1"], progress=False)
    out = _one_line(CliRunner().invoke(app, ["train", "cifar10_resnet18w16_cpu", "--resume", str(run)]))
    assert "continues the recipe it was started with" in out and "name" in out
    with pytest.raises(ConfigError, match="differs in .*epochs"):
        train("quickstart", resume=run, progress=False)
    assert train(run / "recipe.yaml", resume=run, progress=False) == run  # its own recipe: fine


def test_hub_num_classes_that_contradict_the_dataset_are_refused():
    for pretrained in (False, True):
        with pytest.raises(ConfigError, match="dataset='cifar100' has 100 classes, but num_classes=10"):
            torch.hub.load(str(ROOT), "again_resnet18", source="local", pretrained=pretrained, num_classes=10,
                           dataset="cifar100")
    model = torch.hub.load(str(ROOT), "again_resnet18", source="local", num_classes=100, width=4).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)  # no dataset named: any class count
