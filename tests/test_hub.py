import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

import againzoo
from againzoo import CheckpointError
from againzoo.card import zoo_card
from againzoo.cli import app
from againzoo.checkpoint import save_pretrained, sha256_of
from againzoo.pretrained import from_pretrained
from againzoo.registry import PretrainedEntry, register

from .conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_cache(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Lay a folder out as a Hugging Face Hub cache entry (refs/main -> snapshots/<commit>/...)."""
    root = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    shutil.copytree(folder, snap)
    return snap


@pytest.fixture
def saved(tmp_path):
    m = tiny().eval()
    with torch.no_grad():
        m.ase.fc.weight.normal_()
    d = save_pretrained(m, tmp_path / "ckpt", label_names=[str(i) for i in range(10)])
    return m, d


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, saved):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    populate_cache(tmp_path / "hf", "zoo/again-tiny", saved[1])
    return saved


def test_save_load_round_trip_identical_logits(saved):
    m, d = saved
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((d / "config.json").read_text())
    for key in ("architecture", "num_classes", "num_features", "pretrained_cfg", "again", "againzoo_version"):
        assert key in cfg
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32] and len(cfg["label_names"]) == 10
    x = torch.rand(3, 3, 16, 16)
    loaded = from_pretrained(d)
    assert not loaded.training and torch.equal(m(x), loaded(x))


def test_offline_hub_cache_through_from_pretrained_and_torch_hub(offline_hub):
    m, _ = offline_hub
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(from_pretrained("zoo/again-tiny")(x), m(x))
    hubbed = torch.hub.load(str(ROOT), "again_resnet18", source="local", pretrained="zoo/again-tiny")
    assert torch.equal(hubbed(x), m(x))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE=1"):
        from_pretrained("zoo/not-there")


def test_registry_pretrained_true_verifies_sha256(offline_hub, monkeypatch, tmp_path):
    m, d = offline_hub
    registry = tmp_path / "registry.json"
    monkeypatch.setenv("AGAINZOO_REGISTRY", str(registry))
    register(PretrainedEntry("again_resnet18", "cifar10", "zoo/again-tiny", sha256_of(d / "model.safetensors")))
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(againzoo.create_model("again_resnet18", pretrained=True)(x), m(x))
    register(PretrainedEntry("again_resnet18", "cifar10", "zoo/again-tiny", "0" * 64))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        againzoo.create_model("again_resnet18", pretrained=True)
    with pytest.raises(CheckpointError, match="no published weights for again_wrn34_10"):
        againzoo.create_model("again_wrn34_10", pretrained=True)


def test_corrupted_truncated_mismatched_and_missing(saved, tmp_path):
    _, d = saved
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    data = (d / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        from_pretrained(bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        from_pretrained(bad)
    with pytest.raises(CheckpointError, match="num_classes mismatch: the checkpoint has 10 classes, 100 were requested"):
        from_pretrained(d, num_classes=100)
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    del state["ase.fc.bias"]
    config = json.loads((d / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "weights_sha256"}))
    save_file(state, str(bad / "model.safetensors"))  # a pair without content hashes (another tool's)
    with pytest.raises(CheckpointError, match="missing keys: ase.fc.bias"):
        from_pretrained(bad)
    with pytest.raises(CheckpointError, match="holds a resnet18_cifar checkpoint, not again_vgg16"):
        againzoo.create_model("again_vgg16", pretrained=str(d))


@pytest.mark.slow  # a fresh interpreter (~10 s of imports)
def test_timm_hf_hub_model_is_loaded_and_wrapped_offline(tmp_path):
    from timm.models._hub import save_for_hf

    plain = timm.create_model("test_resnet", num_classes=7)
    folder = tmp_path / "repo"
    save_for_hf(plain, folder)
    populate_cache(tmp_path / "hf", "someone/test-resnet", folder)
    code = ("import torch, againzoo\n"
            "m = againzoo.from_pretrained('hf-hub:someone/test-resnet')\n"
            "print(type(m).__name__, m.num_classes, m.layer, tuple(m(torch.rand(2, 3, 32, 32)).shape))\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:3] == ["AgainModel", "7", plain.feature_info[-1]["module"]]


def test_push_dry_run_lists_files_and_card(tiny_runs):
    run = tiny_runs["again"]
    res = CliRunner().invoke(app, ["push", str(run), "--repo-id", "me/again-digits", "--dry-run"])
    assert res.exit_code == 0, res.output
    listed = re.findall(r"^  (\S+)", res.output.split("--- README.md ---")[0], flags=re.M)
    assert listed == ["README.md", "config.json", "curves.png", "eval.json", "metrics.jsonl", "model.safetensors",
                      "recipe.yaml"]
    assert "library_name: againzoo" in res.output and "model-index:" in res.output


def test_push_uploads_with_hfapi(tiny_runs, monkeypatch):
    import huggingface_hub

    from againzoo.hub import push

    run = tiny_runs["again"]
    calls = {}

    class FakeApi:
        def __init__(self, token=None, **kw):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls["branch"] = branch

        def create_commit(self, repo_id, operations, revision=None, commit_message=""):
            calls["files"] = sorted(op.path_in_repo for op in operations)
            calls["sources"] = {op.path_in_repo: op.path_or_fileobj for op in operations}
            return "https://example.invalid/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    plan = push(run, "me/again-digits", private=True, revision="v1")
    assert calls["create"] == ("me/again-digits", True, True) and calls["branch"] == "v1"
    assert calls["files"] == plan["files"] and "state.safetensors" not in calls["files"]
    # files are committed from where they are (no temporary copies); the card from memory
    assert calls["sources"]["model.safetensors"] == str(run / "best" / "model.safetensors")
    assert calls["sources"]["README.md"].decode().startswith("---\nlicense:")


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "bad name/x", "org/" + "x" * 120])
def test_push_refuses_an_invalid_repo_id_in_one_line(tiny_runs, repo_id):
    res = CliRunner().invoke(app, ["push", str(tiny_runs["again"]), "--repo-id", repo_id])
    assert res.exit_code == 2 and "invalid Hub repo id" in res.output and len(res.output.strip().splitlines()) == 1


def test_push_and_download_without_network_are_one_line(tiny_runs, monkeypatch, tmp_path):
    """A Hub endpoint that refuses connections: the command says so in one line, exit 2."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub_constants(), "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    res = CliRunner().invoke(app, ["push", str(tiny_runs["again"]), "--repo-id", "me/again-digits"])
    assert res.exit_code == 2 and res.output.startswith("error: push to me/again-digits failed"), res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["eval", "me/not-cached-anywhere", "-n", "4"])
    assert res.exit_code == 2 and "me/not-cached-anywhere" in res.output and len(res.output.strip().splitlines()) == 1


def huggingface_hub_constants():
    from huggingface_hub import constants

    return constants


def test_no_torch_load_anywhere():
    """Weights are safetensors; CIFAR pickles go through the allow-list unpickler in data/safe_pickle.py."""
    sources = [p for p in (ROOT / "againzoo").rglob("*.py")] + [ROOT / "hubconf.py"]
    offenders = [str(p) for p in sources if re.search(r"torch\.load\(|(?<![\w.])pickle\.loads?\(|allow_pickle=True", p.read_text())]
    assert offenders == [], offenders


def test_cards_numbers_come_from_eval_json(tiny_runs, tmp_path):
    run = tiny_runs["again"]
    out = tmp_path / "MODEL_CARD.md"
    res = CliRunner().invoke(app, ["card", str(run), "-o", str(out), "--readme"])
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "best" / "eval.json").read_text())
    allowed = set()

    def walk(v):
        if isinstance(v, float) and 0 <= v <= 1:
            allowed.add(f"{100 * v:.2f}")
        elif isinstance(v, dict):
            for w in v.values():
                walk(w)
        elif isinstance(v, list):
            for w in v:
                walk(w)
        elif isinstance(v, str):
            allowed.update(re.findall(r"\d+\.\d\d", v))

    walk(ev)
    on = json.loads((run / "best" / "config.json").read_text())["trained_on"]
    assert f"on 1 x cpu ({on['precision']}, torch " in out.read_text()  # where it was trained (trained_on)
    for card in (out.read_text(), (run / "best" / "README.md").read_text()):
        text = re.sub(r"`[^`]*`", "", card)  # code spans hold config, not measurements
        numbers = re.findall(r"(?<![\d.])\d+\.\d\d(?![\d])", text)
        assert numbers, "the card shows measured numbers"
        assert set(numbers) <= allowed, set(numbers) - allowed
    assert zoo_card([]).count("No models yet") == 1


def test_card_is_a_valid_hub_card_with_pipeline_tag_and_the_repo_id(tiny_runs):
    from huggingface_hub import ModelCard

    from againzoo.hub import push

    plan = push(tiny_runs["again"], "me/again-digits", dry_run=True)
    card = ModelCard(plan["card"])
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "againzoo"
    results = card.data.eval_results
    assert results and all(r.metric_type == "accuracy" and r.metric_args["norm"] == "Linf" for r in results)
    assert 'from_pretrained("me/again-digits")' in plan["card"]


def test_from_pretrained_takes_huggingface_hub_arguments(saved, tmp_path, monkeypatch):
    """cache_dir / local_files_only / token / force_download / revision reach snapshot_download."""
    import huggingface_hub

    from againzoo.pretrained import from_pretrained

    m, d = saved
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    populate_cache(tmp_path / "elsewhere", "zoo/again-tiny", d)
    x = torch.rand(2, 3, 32, 32)
    got = from_pretrained("zoo/again-tiny", cache_dir=tmp_path / "elsewhere" / "hub", local_files_only=True)
    assert torch.allclose(got(x), m(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        from_pretrained("zoo/again-tiny", local_files_only=True)  # the default cache has nothing
    seen = {}
    real = huggingface_hub.snapshot_download

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **{**kw, "token": None, "force_download": False})

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    from_pretrained("zoo/again-tiny", cache_dir=tmp_path / "elsewhere" / "hub", local_files_only=True,
                    token="hf_x", force_download=True)
    assert seen["token"] == "hf_x" and seen["force_download"] is True and "model.safetensors" in seen["allow_patterns"]
