"""Robust models as deployed: int8 and fp16 exports judged on test images against PyTorch, a broken
quantization refused in one line, and the robustness of an ONNX file measured on the file."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from againzoo.cli import app
from againzoo.integrity import WEIGHTS_KEY, sha256_of
from againzoo.onnx_precision import MIN_AGREEMENT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))
import predict  # noqa: E402


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reduced_precision_export_is_judged_on_test_images(tiny_runs, tmp_path, precision):
    out = tmp_path / f"m_{precision}.onnx"
    res = CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(out), "--precision", precision,
                                   "-n", "200"])
    assert res.exit_code == 0, res.output
    assert f"{precision} vs PyTorch on first 200 images of digits/test" in res.output
    props = _props(out)
    check = json.loads(props["verification"])
    assert props["precision"] == precision and check["n"] == 200
    assert check["top1_agreement"] >= MIN_AGREEMENT - 1e-9 and check["torch_clean_acc"] - check["clean_acc"] <= 0.01 + 1e-9
    assert props[WEIGHTS_KEY] == sha256_of(tiny_runs["again"] / "best" / "model.safetensors")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "ArgMax" in ops and "Gather" in ops  # the gate is still there, and float
    if precision == "int8":
        assert "training images of digits" in props["calibration"] and "DequantizeLinear" in ops
        gather_inputs = {i for n in onnx.load(str(out)).graph.node if n.op_type == "Gather" for i in n.input}
        quantized = {o for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        assert not gather_inputs & quantized  # the gate's Gather reads float weights
    else:
        mo = onnx.load(str(out))
        assert mo.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
        assert mo.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in mo.graph.initializer)
    p = predict.Predictor(out)
    assert p.precision == precision
    x = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    assert p.predict(x).probabilities.shape == (3, 10)


def test_a_quantized_gate_is_refused_in_one_line(tiny_runs, tmp_path):
    """Quantizing the whole graph (the gate's Gather included) gives a file onnxruntime cannot run, or
    one that disagrees: either way nothing is written and the error is one line."""
    from againzoo.errors import UserError
    from againzoo.onnx import calibration_images, export
    from againzoo.evaluation import eval_data
    from againzoo.pretrained import from_pretrained

    model, wdir = from_pretrained(str(tiny_runs["again"] / "best"), return_dir=True)
    config = json.loads((wdir / "config.json").read_text())
    x, y, data = eval_data(config, None, None, 100)
    out = tmp_path / "broken.onnx"
    all_ops = ("Conv", "Gemm", "Gather", "Mul", "Add", "Relu", "ReduceMean", "ArgMax")
    with pytest.raises(UserError) as e:
        export(model, out, config=config, precision="int8", test=(x, y, data["evaluated"]),
               calibration=calibration_images(config, None, 64), quantized_ops=all_ops)
    assert "int8 file" in str(e.value) and "was not written" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_precision_is_checked_before_any_work(tiny_runs, tmp_path):
    res = CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(tmp_path / "m.onnx"),
                                   "--precision", "int4"])
    assert res.exit_code == 2 and "precision must be one of fp32, fp16, int8" in res.output
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_file_evaluation_transfer_and_square(tiny_runs, tmp_path):
    out = tmp_path / "m_int8.onnx"
    assert CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(out), "--precision", "int8",
                                    "-n", "100"]).exit_code == 0
    res = CliRunner().invoke(app, ["eval", str(out), "--checkpoint", str(tiny_runs["again"]), "-n", "16",
                                   "--aa-budget", "3,2,8", "-q"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".eval.json").read_text())
    assert record["precision"] == "int8" and record["data"]["n"] == 16 and record["square_queries"] == 8
    cols = record["columns"]
    assert "Clean" in cols and any(c.startswith("transfer official APGD") for c in cols) and "Square-8 (on the file)" in cols
    worst = np.frombuffer(record["per_example"]["worst_case"].encode(), np.uint8) - 48
    for name, bits in record["per_example"].items():  # the worst case is below every attack, per example
        assert (worst <= np.frombuffer(bits.encode(), np.uint8) - 48).all(), name
    assert record["worst_case_acc"] == worst.mean() and record[WEIGHTS_KEY] == sha256_of(
        tiny_runs["again"] / "best" / "model.safetensors")
    lo, hi = record["worst_case_ci95"]
    assert lo <= record["worst_case_acc"] <= hi
    assert "worst case per example" in res.output


def test_onnx_evaluation_state_crafts_each_attack_once_and_resumes(tiny_runs, tmp_path, monkeypatch):
    """With a state directory every transfer attack and Square run is kept: the same evaluation called
    again (after an interruption, or for another file of the same source, as ``zoo deployed`` does)
    runs no attack again and gives the same per-example result."""
    import againzoo.autoattack as AA
    import againzoo.evaluation as E
    from againzoo.onnx_eval import evaluate_onnx

    out = tmp_path / "m.onnx"
    assert CliRunner().invoke(app, ["export", str(tiny_runs["plain"]), "-o", str(out)]).exit_code == 0
    kw = dict(n_examples=8, queries=4, aa_budget={"n_iter": 2, "n_targets": 1, "n_queries": 4}, progress=False,
              state_dir=tmp_path / "state")
    first = evaluate_onnx(out, str(tiny_runs["plain"]), output=tmp_path / "a.json", **kw)
    units = sorted(p.name for p in (tmp_path / "state").rglob("*.safetensors"))
    assert len(units) == sum(k.startswith("transfer") for k in first["columns"]) + 1  # + Square

    def attacked_again(*a, **k):
        raise AssertionError("an attack ran a second time")

    for mod, name in ((E, "run_attack"), (AA, "run_autoattack"), (AA, "square_correct")):
        monkeypatch.setattr(mod, name, attacked_again)
    second = evaluate_onnx(out, str(tiny_runs["plain"]), output=tmp_path / "b.json", **kw)
    assert second["per_example"] == first["per_example"] and second["columns"] == first["columns"]


def test_files_of_one_checkpoint_share_each_crafted_attack_and_keep_only_bits(tiny_runs, tmp_path, monkeypatch):
    """``zoo deployed`` evaluates a checkpoint's files together: each transfer attack is crafted once for
    all of them, the state keeps one bit per image and file (no adversarial images: kilobytes that can
    be committed and continued in another session), and a file the state has no result of makes the
    attack be crafted again, keeping the other files' results."""
    import againzoo.autoattack as AA
    import againzoo.evaluation as E
    from againzoo.io import load_tensors
    from againzoo.onnx_eval import evaluate_onnx, evaluate_onnx_files

    files = {p: tmp_path / f"m_{p}.onnx" for p in ("fp32", "fp16")}
    for p, out in files.items():
        assert CliRunner().invoke(app, ["export", str(tiny_runs["plain"]), "-o", str(out), "--precision", p,
                                        "-n", "100"]).exit_code == 0
    kw = dict(n_examples=8, queries=4, aa_budget={"n_iter": 2, "n_targets": 1, "n_queries": 4}, progress=False)
    crafted = []
    real_attack, real_aa = E.run_attack, AA.run_autoattack
    monkeypatch.setattr(E, "run_attack", lambda spec, *a: crafted.append(spec.name) or real_attack(spec, *a))
    monkeypatch.setattr(AA, "run_autoattack", lambda *a, **k: crafted.append("AA") or real_aa(*a, **k))
    state = tmp_path / "state"
    alone = evaluate_onnx(files["fp32"], str(tiny_runs["plain"]), output=tmp_path / "alone.json", state_dir=state, **kw)
    n_attacks = len(crafted)
    assert n_attacks == sum(c.startswith("transfer") for c in alone["columns"])
    crafted.clear()
    both = evaluate_onnx_files(list(files.values()), str(tiny_runs["plain"]), state_dir=state,
                               outputs=[tmp_path / "a.json", tmp_path / "b.json"], **kw)
    assert len(crafted) == n_attacks  # the fp16 file was new: each attack crafted once more, for both files
    assert both[0]["per_example"] == alone["per_example"] and [r["precision"] for r in both] == ["fp32", "fp16"]
    crafted.clear()
    again = evaluate_onnx(files["fp16"], str(tiny_runs["plain"]), output=tmp_path / "c.json", state_dir=state, **kw)
    assert crafted == [] and again["per_example"] == both[1]["per_example"]
    assert again["cost"]["units_computed"] == 0 and again["cost"]["units_reused"] > 0  # all from earlier calls
    assert again["cost"]["seconds_all_calls"] >= again["seconds"]
    units = list(state.rglob("*.safetensors"))
    assert all(t.dtype == torch.bool and t.dim() == 1 for u in units for t in load_tensors(u)[0].values())
    assert sum(u.stat().st_size for u in units) < 2048 * len(units)


def test_onnx_evaluation_refuses_another_checkpoint(tiny_runs, tmp_path):
    out = tmp_path / "m.onnx"
    assert CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(out)]).exit_code == 0
    res = CliRunner().invoke(app, ["eval", str(out), "--checkpoint", str(tiny_runs["plain"]), "-n", "8"])
    assert res.exit_code == 2 and "was exported from weights with sha256" in res.output
    res = CliRunner().invoke(app, ["eval", str(out), "-n", "8"])
    assert res.exit_code == 2 and "--checkpoint" in res.output


def test_predict_cli_names_the_precision_and_refuses_cuda_without_it(tiny_runs, tmp_path):
    import subprocess

    out = tmp_path / "m.onnx"
    assert CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(out)]).exit_code == 0
    np.save(tmp_path / "b.npy", np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32))
    r = subprocess.run([sys.executable, str(ROOT / "export" / "predict.py"), str(out), "--info"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "fp32, CPUExecutionProvider, input 3x16x16, 10 classes" in r.stdout
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        r = subprocess.run([sys.executable, str(ROOT / "export" / "predict.py"), str(out), "--npy",
                            str(tmp_path / "b.npy"), "--provider", "cuda"], capture_output=True, text=True)
        assert r.returncode == 2 and "needs onnxruntime-gpu" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _cuda_provider(), reason="needs onnxruntime-gpu and a CUDA device (a GPU window)")
def test_fp16_file_on_the_cuda_provider_agrees_with_pytorch(tiny_runs, tmp_path):
    out = tmp_path / "m16.onnx"
    assert CliRunner().invoke(app, ["export", str(tiny_runs["again"]), "-o", str(out), "--precision", "fp16"]).exit_code == 0
    p = predict.Predictor(out, providers=["CUDAExecutionProvider"])
    assert p.provider == "CUDAExecutionProvider"
    from againzoo.pretrained import from_pretrained

    model = from_pretrained(str(tiny_runs["again"] / "best"))
    x = torch.rand(64, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).argmax(1).numpy()
    assert (p.predict(x.numpy()).indices == ref).mean() >= MIN_AGREEMENT


def test_zoo_deployed_records_a_refused_precision_with_its_figures(tiny_runs, tmp_path, monkeypatch):
    """A precision whose file fails the export's check is recorded as refused (the figures that refused
    it, nothing attacked) and the card says so; here the rule is made impossible to meet."""
    import shutil

    import againzoo.onnx_precision as P

    monkeypatch.setattr(P, "MIN_AGREEMENT", 1.5)
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_runs["again"] / "best", zoo / "tiny_again-digits")
    res = CliRunner().invoke(app, ["zoo", "deployed", "tiny_again", "--dataset", "digits", "--zoo-dir", str(zoo),
                                   "--card", str(tmp_path / "CARD.md"), "--precision", "int8", "-n", "100", "-q"])
    assert res.exit_code == 0, res.output
    assert "tiny_again int8: REFUSED (the int8 file for" in res.output
    record = json.loads((zoo / "tiny_again-digits" / "deployed.json").read_text())["records"]["int8"]
    assert "at least 150% required" in record["refused"] and "file_mb" not in record
    assert f"the int8 file for {zoo / 'tiny_again-digits'} was not written" in record["refused"]  # not a temp path
    assert record["verification"]["n"] == 100 and 0 < record["verification"]["top1_agreement"] <= 1
    v = record["verification"]  # every disagreement lies within the widest flipped margin, so its share covers them
    assert v["flipped_max_margin"] >= 0 and v["near_tie_share"] >= 1 - v["top1_agreement"] - 1e-9
    card = (tmp_path / "CARD.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| int8 |"))
    assert "not written" in row and "refused by the export's check (at least 150% agreement" in row
    assert f"{100 * record['verification']['top1_agreement']:.2f}" in row


@pytest.mark.slow
def test_zoo_deployed_records_each_precision_and_the_card_shows_them(tiny_runs, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_runs["again"] / "best", zoo / "tiny_again-digits")
    res = CliRunner().invoke(app, ["zoo", "deployed", "tiny_again", "--dataset", "digits", "--zoo-dir", str(zoo),
                                   "--card", str(tmp_path / "CARD.md"),
                                   "--precision", "fp32", "--precision", "int8", "-n", "100", "--aa-budget", "2,2,5", "-q"])
    assert res.exit_code == 0, res.output
    deployed = json.loads((zoo / "tiny_again-digits" / "deployed.json").read_text())
    assert deployed[WEIGHTS_KEY] == sha256_of(zoo / "tiny_again-digits" / "model.safetensors")
    assert set(deployed["records"]) == {"fp32", "int8"}
    assert deployed["records"]["int8"]["file_mb"] < deployed["records"]["fp32"]["file_mb"]
    card = (tmp_path / "CARD.md").read_text()
    assert "Deployed as ONNX" in card and "| int8 |" in card and "| fp32 |" in card and "exact (parity)" in card
    assert not list(zoo.rglob("*.onnx"))  # the exports never land in the zoo folder
    assert not (zoo / "tiny_again-digits" / "deployed_state").exists()  # the finished evaluation's state is spent
    res = CliRunner().invoke(app, ["zoo", "deployed", "nothing_here", "--zoo-dir", str(zoo)])
    assert res.exit_code == 2 and "holds no published model" in res.output
