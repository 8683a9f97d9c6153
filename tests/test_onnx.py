import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from typer.testing import CliRunner

from againzoo import AgainModel
from againzoo import onnx as az_onnx
from againzoo.cli import app

from .conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))
import predict  # noqa: E402  (the torch-free deployment module)


def _models():
    yield "resnet18_cifar", tiny("again_resnet18", pretrained_cfg_overlay={"input_size": (3, 16, 16)}), 16
    yield "wrn34_10", tiny("again_wrn34_10", pretrained_cfg_overlay={"input_size": (3, 16, 16)}), 16
    yield "convnext", AgainModel(timm.create_model("convnext_atto", num_classes=10, dims=(8, 16, 32, 64),
                                                   depths=(1, 1, 1, 1)), input_size=(3, 32, 32)), 32
    yield "vit", AgainModel(timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=16, patch_size=4,
                                              embed_dim=32, depth=2, num_heads=2)), 16


# the CIFAR ResNet in the default tier; the other families (same exporter, other ops) in the slow one
@pytest.mark.parametrize("name", ["resnet18_cifar", *(pytest.param(n, marks=pytest.mark.slow)
                                                      for n in ("wrn34_10", "convnext", "vit"))])
def test_parity_at_batch_1_and_7(name, tmp_path):
    _, model, px = next(m for m in _models() if m[0] == name)
    model.eval()
    with torch.no_grad():  # a non-trivial ASE head, so the gate actually varies
        model.ase.fc.weight.normal_(0, 0.5)
    out = tmp_path / f"{name}.onnx"
    report = az_onnx.export(model, out, with_aux=True)
    assert report["passed"] and set(report["sets"]) == {"random", "adversarial"}
    mo = onnx.load(str(out))
    ops = [n.op_type for n in mo.graph.node]
    assert "ArgMax" in ops and "Gather" in ops and "Mul" in ops
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = torch.rand(n, 3, px, px)
        logits, aux = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref, ref_aux = model(x, return_aux=True)
        assert np.abs(logits - ref.numpy()).max() <= 1e-4
        assert (logits.argmax(1) == ref.numpy().argmax(1)).all()
        top2 = np.sort(ref_aux.numpy(), 1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4
        assert (aux.argmax(1) == ref_aux.numpy().argmax(1))[clear].all()


def test_fixed_batch_softmax_and_metadata(tmp_path):
    model = tiny(pretrained_cfg_overlay={"input_size": (3, 16, 16)}).eval()
    out = tmp_path / "m.onnx"
    report = az_onnx.export(model, out, batch=4, with_softmax=True, config={"architecture": "resnet18_cifar"})
    assert report["outputs"] == ["probabilities"]
    mo = onnx.load(str(out))
    assert mo.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    meta = {p.key: p.value for p in mo.metadata_props}
    assert json.loads(meta["input_size"]) == [3, 16, 16] and meta["opset"] == "18"
    assert json.loads(meta["again"])["alpha"] == 0.6 and "dynamo" in meta["exporter"]
    p = predict.Predictor(out)
    res = p.predict(np.random.rand(9, 3, 16, 16).astype(np.float32))  # 9 = 4 + 4 + 1 (padded)
    assert res.probabilities.shape == (9, 10)
    np.testing.assert_allclose(res.probabilities.sum(1), 1.0, atol=1e-5)


def test_export_cli_with_eval_metrics_and_real_images(tiny_runs, tmp_path):
    run = tiny_runs["again"]
    out = tmp_path / "digits.onnx"
    res = CliRunner().invoke(app, ["export", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "real" in res.output and "adversarial" in res.output and "gate agreement 1.0000" in res.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    metrics = json.loads(meta["metrics"])
    ev = json.loads((run / "best" / "eval.json").read_text())
    assert metrics["worst_case_acc"] == ev["worst_case_acc"]
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits"]


def test_parity_failure_is_loud(tiny_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(az_onnx, "ATOL", -1.0)  # an impossible tolerance stands in for a broken graph
    res = CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 1 and "PARITY FAILED" in res.output
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    model = tiny(pretrained_cfg_overlay={"input_size": (3, 16, 16)}).eval()
    az_onnx.export(model, out, config={"pretrained_cfg": {"input_size": [3, 16, 16], "label_names": list("abcdefghij")}})
    return out, model


def test_predictor_runs_with_torch_blocked(exported, tmp_path):
    out, model = exported
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    from PIL import Image

    Image.fromarray((x[0].transpose(1, 2, 0) * 255).astype(np.uint8)).resize((40, 40)).save(tmp_path / "img.png")
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        f"sys.path.insert(0, {str(ROOT / 'export')!r})\n"
        "import predict, numpy as np\n"
        f"p = predict.Predictor({str(out)!r})\n"
        f"r = p.predict(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"r2 = p.predict([{str(tmp_path / 'img.png')!r}])\n"
        "print(json.dumps({'labels': r.labels, 'provider': p.provider, 'img': r2.labels,\n"
        "                  'torch_loaded': sys.modules.get('torch') is not None}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    with torch.no_grad():
        expected = [list("abcdefghij")[i] for i in model(torch.from_numpy(x)).argmax(1)]
    assert got["labels"] == expected and got["provider"] == "CPUExecutionProvider" and not got["torch_loaded"]
    assert len(got["img"]) == 1
    cli = subprocess.run([sys.executable, str(ROOT / "export" / "predict.py"), str(out), "--npy",
                          str(tmp_path / "x.npy"), "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and len(cli.stdout.splitlines()) == 5
    assert "torch" not in (ROOT / "export" / "predict.py").read_text().replace("torch-free", "").replace(
        "no torch", "").replace("imports torch", "")


@pytest.mark.parametrize(
    "x, match",
    [
        (np.random.rand(16, 16).astype(np.float32), "expected an array of shape"),
        (np.random.rand(2, 1, 16, 16).astype(np.float32), "expected 3 channels"),
        (np.random.rand(2, 3, 8, 8).astype(np.float32), "expected 16x16 images"),
        (np.random.rand(2, 16, 16, 3).astype(np.float32), "expected 3 channels"),
        (np.ones((1, 3, 16, 16), dtype=np.int32), "dtype int32"),
        (np.full((1, 3, 16, 16), np.nan, dtype=np.float32), "NaN or Inf"),
        (np.full((1, 3, 16, 16), np.inf, dtype=np.float32), "NaN or Inf"),
        (np.full((1, 3, 16, 16), 2.0, dtype=np.float32), r"values in \[0, 1\]"),
    ],
)
def test_predictor_bad_input(exported, x, match):
    with pytest.raises(predict.InputError, match=match):
        predict.Predictor(exported[0]).predict(x)


def test_predictor_clamp_and_uint8(exported):
    p = predict.Predictor(exported[0], clamp=True)
    x = np.random.rand(2, 3, 16, 16).astype(np.float32)
    a = p.predict(np.clip(x * 2 - 0.5, 0, 1)).probabilities
    b = p.predict(x * 2 - 0.5).probabilities  # clamped, not rejected
    np.testing.assert_allclose(a, b, atol=1e-6)
    u = (x * 255).astype(np.uint8)
    np.testing.assert_allclose(p.predict(u).probabilities, p.predict(u.astype(np.float32) / 255).probabilities, atol=1e-6)


def _predict_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "export" / "predict.py"), *args], capture_output=True,
                          text=True, timeout=120, **kw)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2 and res.stdout == "", (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr


def test_predict_cli_missing_and_corrupt_model_files(exported, tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")
    assert "model file not found" in _one_line_error(_predict_cli(str(tmp_path / "none.onnx"), str(tmp_path / "img.png")))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported[0].read_bytes()[:300])
    assert "cannot load" in _one_line_error(_predict_cli(str(bad), str(tmp_path / "img.png")))


def test_predict_cli_images_non_image_grayscale_and_huge(exported, tmp_path):
    from PIL import Image

    (tmp_path / "notes.txt").write_text("not an image")
    assert "not a readable image" in _one_line_error(_predict_cli(str(exported[0]), str(tmp_path / "notes.txt")))
    assert "not a readable image" in _one_line_error(_predict_cli(str(exported[0]), str(tmp_path / "missing.png")))
    Image.new("L", (20, 20), 128).save(tmp_path / "gray.png")  # grayscale: converted to RGB and resized
    ok = _predict_cli(str(exported[0]), str(tmp_path / "gray.png"))
    assert ok.returncode == 0 and ok.stdout.startswith(str(tmp_path / "gray.png")), ok.stderr
    Image.new("1", (15_000, 15_000)).save(tmp_path / "huge.png")  # 225 Mpixel: PIL's decompression-bomb limit
    assert "huge.png" in _one_line_error(_predict_cli(str(exported[0]), str(tmp_path / "huge.png")))


def test_predict_cli_into_a_closed_pipe(exported, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2000, 3, 16, 16), dtype=np.float32))
    res = subprocess.run(f"{sys.executable} {ROOT / 'export' / 'predict.py'} {exported[0]} --npy {tmp_path / 'x.npy'}"
                         " | head -n 1", shell=True, capture_output=True, text=True, timeout=120)
    assert len(res.stdout.splitlines()) == 1 and res.stderr == "", res.stderr


@pytest.mark.parametrize("kw", [{"gate_source": "soft"},
                                pytest.param({"layer": ["last_branch", "last_stage"]}, marks=pytest.mark.slow)],
                         ids=["soft_gate", "two_sites"])
def test_again_variants_export_with_parity(tmp_path, kw):
    """The soft gate (Softmax -> MatMul) and a second site on the residual branch (a pre-hook) export
    and match PyTorch on random and adversarial images."""
    m = tiny(pretrained_cfg_overlay={"input_size": (3, 16, 16)}, **kw).eval()
    report = az_onnx.export(m, tmp_path / "v.onnx")
    assert (tmp_path / "v.onnx").exists()
    assert all(r["top1_agreement"] == 1.0 and r["gate_agreement"] == 1.0 for r in report["sets"].values())
