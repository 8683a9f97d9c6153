"""`againzoo zoo build` end to end at tiny size: train, publish fp16, evaluate the published file,
register, re-card; then `pretrained=True` (and torch.hub) load it offline with its sha256."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import againzoo
from againzoo.cli import app
from againzoo.errors import CheckpointError
from againzoo.evaluation import eval_data
from againzoo.runtime import accuracy
from againzoo.checkpoint import load_local, sha256_of
from againzoo.registry import entries
from againzoo.stats import from_bits
from againzoo.zoo import ZooEntry, build, join, pack

from .conftest import TINY_RUN

pytestmark = pytest.mark.slow  # a whole zoo build (train, publish, evaluate) at tiny size: the slow tier

ROOT = Path(__file__).resolve().parents[1]
TINY_EVAL = {"pgd_steps": (2,), "cw_steps": 2, "n_check": 8, "aa_budget": {"n_iter": 5, "n_targets": 2, "n_queries": 10}}
ENTRIES = [ZooEntry("again_resnet18", "quickstart"), ZooEntry("resnet18_cifar", "quickstart", ("model.again.enabled=false",))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    registry = root / "againzoo" / "registry.json"
    mp = pytest.MonkeyPatch()
    mp.setenv("AGAINZOO_REGISTRY", str(registry))
    manifest = build(entries=ENTRIES, zoo_dir=root / "zoo", registry=registry, card=root / "MODEL_CARD.md",
                     work_dir=root / "runs", overrides=[*TINY_RUN, "epochs=2"], n_examples=40, progress=False,
                     eval_kw=TINY_EVAL, parts_dir=root / "parts", split_mb=0.2)
    yield root, registry, manifest
    mp.undo()


def test_build_publishes_evaluates_and_registers(built):
    root, registry, manifest = built
    assert [e["id"] for e in manifest["entries"]] == ["again_resnet18", "resnet18_cifar"]
    assert json.loads((root / "runs" / "manifest.json").read_text()) == manifest
    for e in manifest["entries"]:
        d = Path(e["folder"])
        assert d == root / "zoo" / f"{e['id']}-digits"  # not the published CIFAR-10 folder
        assert {"config.json", "eval.json", "metrics.jsonl", "robustbench.json", "model.safetensors"} <= {
            p.name for p in d.iterdir()}
        with safe_open(str(d / "model.safetensors"), "pt") as f:  # fp16 weights, integer buffers unchanged
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert torch.float16 in dtypes and torch.float32 not in dtypes
        config = json.loads((d / "config.json").read_text())
        assert config["published"]["dtype"] == "float16" and config["weights"]["kind"] == "raw"
        ev = json.loads((d / "eval.json").read_text())
        assert ev["suite"] == "paper" and ev["data"]["n"] == 40 and "AA" in ev["columns"]
        reg = e["registry"]
        assert reg["sha256"] == sha256_of(d / "model.safetensors")
        assert reg["metrics"]["worst_case"] == round(ev["worst_case_acc"], 4)
        # the evaluation is of exactly the published (fp16) weights
        model = load_local(d)
        x, y, _ = eval_data(config, n=40)
        assert accuracy(model, x, y) == ev["clean_acc"]
    assert {(e.model, e.dataset) for e in entries(registry)} == {("again_resnet18", "digits"), ("resnet18_cifar", "digits")}
    card = (root / "MODEL_CARD.md").read_text()
    assert "Official AutoAttack (pyautoattack" in card and "hard gate" in card and "straight-through gate" in card
    assert "img/s" in card
    # the pair, compared on the same images with a paired interval (both records have per-example results)
    assert "`again_resnet18-digits` minus its twin `resnet18_cifar-digits`" in card and "paired bootstrap over the images" in card


def test_pretrained_true_loads_the_local_copy_offline_with_its_sha256(built, monkeypatch):
    root, registry, _ = built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    x = torch.rand(4, 3, 16, 16)
    again = againzoo.create_model("again_resnet18", pretrained=True, dataset="digits")
    assert torch.equal(again(x), load_local(root / "zoo" / "again_resnet18-digits")(x))
    hubbed = torch.hub.load(str(ROOT), "again_resnet18", source="local", pretrained=True, dataset="digits")
    assert torch.equal(hubbed(x), again(x))
    plain = torch.hub.load(str(ROOT), "resnet18_cifar", source="local", pretrained=True, dataset="digits")
    assert type(plain).__name__ == "ResNetCifar"
    # a tampered local copy is refused
    w = root / "zoo" / "again_resnet18-digits" / "model.safetensors"
    good = w.read_bytes()
    try:
        w.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(CheckpointError, match="sha256 mismatch"):
            againzoo.create_model("again_resnet18", pretrained=True, dataset="digits")
    finally:
        w.write_bytes(good)


def test_parts_round_trip(built, tmp_path):
    root, _, _ = built
    index = pack([root / "zoo", root / "MODEL_CARD.md"], root, tmp_path / "parts", split_mb=0.05)
    assert len(index["parts"]) > 1 and all(p["bytes"] <= 0.05 * 2**20 for p in index["parts"])
    names = join(tmp_path / "parts", tmp_path / "back")
    assert "MODEL_CARD.md" in names
    for f in (root / "zoo").rglob("*"):
        if f.is_file():
            assert sha256_of(tmp_path / "back" / f.relative_to(root)) == sha256_of(f)
    part = tmp_path / "parts" / index["parts"][0]["name"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(CheckpointError, match="sha256 mismatch for part"):
        join(tmp_path / "parts", tmp_path / "again")
    assert not (tmp_path / "parts" / "zoo.tar").exists()  # no half-joined archive left behind


def test_each_finished_entry_is_packed_at_once_and_joins_back(built, tmp_path):
    root, registry, manifest = built
    packs = sorted(p.name for p in (root / "parts").glob("*.parts.json"))
    assert packs == ["01-again_resnet18.parts.json", "02-resnet18_cifar.parts.json"]
    assert all(p.stat().st_size <= 0.2 * 2**20 for p in (root / "parts").glob("*.tar.*"))
    names = join(root / "parts", tmp_path)
    assert "zoo/again_resnet18-digits/model.safetensors" in names and "zoo/resnet18_cifar-digits/eval.json" in names
    # the later pack's registry, card and manifest (cumulative) win
    for rel in ("zoo/again_resnet18-digits/model.safetensors", "zoo/resnet18_cifar-digits/model.safetensors", "MODEL_CARD.md",
                "againzoo/registry.json"):
        assert sha256_of(tmp_path / rel) == sha256_of(root / rel), rel
    back = json.loads((tmp_path / "runs" / "manifest.json").read_text())  # as it stood when the last pack was made
    assert [e["registry"]["sha256"] for e in back["entries"]] == [e["registry"]["sha256"] for e in manifest["entries"]]


def test_budget_sizes_every_entry_to_the_same_epochs(tmp_path, monkeypatch):
    from againzoo import zoo

    monkeypatch.setattr(zoo, "_measure", lambda recipe, device, batch: (1000.0, 40000.0))
    entries = [ZooEntry("again_resnet18", "cifar10_resnet18_again_pgd_at_zoo"),
               ZooEntry("resnet18_cifar", "cifar10_resnet18_pgd_at_zoo")]
    plans = zoo.plan(entries, 600.0, 1000, "cpu", [])
    a, b = plans
    assert a.eval_s_est > b.eval_s_est  # two AutoAttack runs (both gates) for the gated model
    assert a.epochs == b.epochs and a.epochs >= 1 and not a.skipped and not b.skipped
    spent = sum(p.epochs * p.epoch_s_est + p.eval_s_est for p in plans)
    assert spent <= 600 < spent + a.epoch_s_est + b.epoch_s_est  # as many epochs as fit, no more
    assert f"epochs={a.epochs}" in a.overrides
    # too little for both: the last entry is dropped with the reason, the first keeps what fits
    plans = zoo.plan(entries, a.eval_s_est + b.eval_s_est - 1, 1000, "cpu", [])
    assert plans[1].skipped and "not even one epoch fits" in plans[1].skipped and not plans[0].skipped


def test_budget_guard_skips_what_cannot_fit_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("AGAINZOO_REGISTRY", str(tmp_path / "registry.json"))
    m = build(entries=ENTRIES[:1], zoo_dir=tmp_path / "zoo", card=tmp_path / "CARD.md", work_dir=tmp_path / "runs",
              budget_minutes=0.01, overrides=TINY_RUN, n_examples=40, progress=False, eval_kw=TINY_EVAL)
    e = m["entries"][0]
    assert "not even one epoch fits" in e["skipped"] and e["measured_images_per_s"] > 0
    assert not (tmp_path / "zoo" / "again_resnet18-digits").exists() and not (tmp_path / "registry.json").exists()


def test_cli_unknown_entry_is_one_line():
    res = CliRunner().invoke(app, ["zoo", "build", "again_nope"])
    assert res.exit_code == 2 and "unknown zoo entries ['again_nope']" in res.output and "Traceback" not in res.output


def test_a_registry_note_is_warned_on_load(built, monkeypatch, tmp_path):
    from dataclasses import replace

    from againzoo.registry import register

    root, registry, _ = built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    entry = next(e for e in entries(registry) if e.model == "again_resnet18")
    try:
        register(replace(entry, note="preliminary: read the card"), registry)
        with pytest.warns(UserWarning, match="again_resnet18 \\(digits\\): preliminary: read the card"):
            againzoo.create_model("again_resnet18", pretrained=True, dataset="digits")
    finally:
        register(entry, registry)


def _published():
    return [e for e in entries(ROOT / "againzoo" / "registry.json") if e.local]


@pytest.mark.parametrize("entry", _published(), ids=lambda e: f"{e.model}-{e.dataset}")
def test_every_published_model_loads_offline_by_each_name_and_matches_its_eval(entry, monkeypatch, tmp_path):
    """The repository's own zoo entries: the sha256-checked local copy through torch.hub, timm's pretrained
    tag and againzoo.create_model; clean accuracy of the loaded file on the first 200 lossless test
    images within 1 point of its eval.json (the record's own per-example results on those images,
    or its accuracy on all its images for a record that predates them)."""
    import timm
    import numpy as np

    from .conftest import LOSSLESS

    if not LOSSLESS.exists():
        pytest.skip(f"lossless CIFAR-10 test images not found at {LOSSLESS}")
    monkeypatch.delenv("AGAINZOO_REGISTRY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = (ROOT / "againzoo" / entry.local).resolve().parent
    assert sha256_of(folder / "model.safetensors") == entry.sha256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a registry note (the preliminary build) is warned: tested above
        model = torch.hub.load(str(ROOT), entry.model, source="local", pretrained=True)
        by_timm = timm.create_model(entry.timm_name, pretrained=True)
        by_name = againzoo.create_model(entry.model, pretrained=True)
    ev = json.loads((folder / "eval.json").read_text())
    bits = (ev.get("per_example") or {}).get("clean")
    n = 200 if bits else ev["data"]["n"]
    expected = float(np.mean(from_bits(bits[:n]))) if bits else ev["clean_acc"]
    d = np.load(LOSSLESS)
    x = torch.from_numpy(d["x_test"][:n]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(d["y_test"][:n]).long()
    assert abs(accuracy(model, x, y) - expected) <= 0.01
    assert torch.equal(by_timm(x[:8]), model(x[:8])) and torch.equal(by_name(x[:8]), model(x[:8]))
