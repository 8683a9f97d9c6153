"""ONNX export of the inference path, with built-in parity verification.

The exported graph is the eval path of the model: HFF off, and for AGAIN models the ASE gate as
``ArgMax -> Gather -> Mul`` (the predicted class's channel weights). Input: float32 images in
[0, 1], NCHW, normalisation inside the graph; a dynamic batch axis (traced with a batch of 2) or
a fixed batch.

Exporter: torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``), the default and
maintained path since torch 2.9 (the TorchScript exporter is deprecated); it traces through the
forward hooks of :class:`~againzoo.adapter.AgainModel`. Opset pinned to 18.

Verification runs every time: ``onnx.checker.check_model(full_check=True)``, then onnxruntime vs
PyTorch on random images, real images of the model's dataset and PGD adversarial images (near
decision boundaries, where the gate's argmax can flip): top-1 agreement, gate agreement and the
largest absolute logit difference. A failure raises :class:`ParityError`.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .version import __version__
from .integrity import WEIGHTS_KEY, sha256_of, stale_record
from . import onnx_precision as P
from .models._base import input_stats
from .adapter import AgainModel
from .losses import primary_aux
from .errors import ConfigError
from .io import output_error, writable_dir

OPSET = 18
ATOL = 1e-4
MARGIN = 1e-4


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the tolerances."""


class InferenceGraph(nn.Module):
    """What gets exported: ``(logits or probabilities[, aux_logits])`` of the eval path."""

    def __init__(self, model: nn.Module, with_softmax: bool = False, with_aux: bool = True):
        super().__init__()
        self.model, self.with_softmax = model, with_softmax
        self.with_aux = with_aux and isinstance(model, AgainModel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.with_aux:
            logits, aux = self.model(x, return_aux=True)
            aux = primary_aux(aux)  # the head whose argmax gates the final features
        else:
            logits, aux = self.model(x), None
        out = torch.softmax(logits, dim=1) if self.with_softmax else logits
        return (out, aux) if aux is not None else (out,)


def _metadata(model: nn.Module, config: dict[str, Any] | None, eval_json: dict[str, Any] | None,
              opset: int) -> dict[str, str]:
    cfg = (config or {}).get("pretrained_cfg") or dict(getattr(model, "pretrained_cfg", {}) or {})
    meta = {
        "againzoo_version": __version__,
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
        "opset": str(opset),
        "input": "float32 images in [0, 1], NCHW, normalisation inside the graph",
        "input_size": json.dumps(list(cfg.get("input_size", []))),
        "mean": json.dumps(list(input_stats(model)[0])),  # applied inside the graph
        "std": json.dumps(list(input_stats(model)[1])),
        "class_names": json.dumps(list((config or {}).get("label_names") or cfg.get("label_names", []))),
        "architecture": str((config or {}).get("architecture", cfg.get("architecture", ""))),
        "again": json.dumps(model.again_config() if isinstance(model, AgainModel) else None),
    }
    if (config or {}).get(WEIGHTS_KEY):  # the source weights this graph was exported (and verified) from
        meta[WEIGHTS_KEY] = str(config[WEIGHTS_KEY])
    if eval_json:
        meta["metrics"] = json.dumps({"suite": eval_json.get("suite"), "eps": eval_json.get("eps"),
                                      "norm": eval_json.get("norm"), "clean_acc": eval_json.get("clean_acc"),
                                      "worst_case_acc": eval_json.get("worst_case_acc"),
                                      "data": eval_json.get("data", {}).get("evaluated")})
    return meta


def _export(graph: InferenceGraph, path: Path, batch: str | int, opset: int, size: tuple[int, ...]) -> None:
    names = ["probabilities" if graph.with_softmax else "logits"] + (["aux_logits"] if graph.with_aux else [])
    n = 2 if batch == "dynamic" else int(batch)
    example = torch.rand((n,) + tuple(size))
    kw: dict[str, Any] = {}
    if batch == "dynamic":
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset, input_names=["images"],
                                 output_names=names, verbose=False, **kw)
        prog.save(str(path))


def _verification_inputs(model: nn.Module, size: tuple[int, ...], real: torch.Tensor | None, eps: float,
                         seed: int) -> dict[str, torch.Tensor]:
    from .runtime import joint_ce
    from .attacks.pgd import pgd

    gen = torch.Generator().manual_seed(seed)
    sets = {"random": torch.rand((16,) + tuple(size), generator=gen)}
    base = sets["random"]
    if real is not None and len(real):
        sets["real"] = real
        base = real
    with torch.no_grad():
        y = model(base).argmax(1)
    sets["adversarial"] = pgd(joint_ce(model, y), base, eps, eps / 4, 10, generator=gen)
    return sets


def verify(model: nn.Module, path: Path, inputs: dict[str, torch.Tensor], with_softmax: bool = False,
           batch: str | int = "dynamic") -> dict[str, Any]:
    """Compare onnxruntime and PyTorch on each input set; raises ParityError on a mismatch."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = P.session(path)
    report: dict[str, Any] = {"checker": "passed", "atol": ATOL, "margin": MARGIN, "sets": {}}
    problems = []
    for name, x in inputs.items():
        n = int(batch) if batch != "dynamic" else len(x)
        outs_ort, outs_pt = [], []
        for i in range(0, len(x) - len(x) % n if batch != "dynamic" else len(x), n):
            xb = x[i:i + n]
            outs_ort.append(sess.run(None, {"images": xb.numpy().astype(np.float32)}))
            with torch.no_grad():
                outs_pt.append(InferenceGraph(model, with_softmax, True)(xb))
        if not outs_ort:
            continue
        o_main = np.concatenate([o[0] for o in outs_ort])
        p_main = torch.cat([o[0] for o in outs_pt]).numpy()
        diff = float(np.abs(o_main - p_main).max())
        top2 = np.sort(p_main, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > MARGIN
        agree = o_main.argmax(1) == p_main.argmax(1)
        entry = {"n": int(len(o_main)), "max_abs_diff": diff, "top1_agreement": float(agree.mean()),
                 "top1_agreement_decisive": float(agree[decisive].mean()) if decisive.any() else 1.0}
        if len(outs_ort[0]) > 1:
            o_aux = np.concatenate([o[1] for o in outs_ort])
            p_aux = torch.cat([o[1] for o in outs_pt]).numpy()
            a2 = np.sort(p_aux, axis=1)[:, -2:]
            clear = (a2[:, 1] - a2[:, 0]) > MARGIN
            gate = o_aux.argmax(1) == p_aux.argmax(1)
            entry["gate_agreement"] = float(gate[clear].mean()) if clear.any() else 1.0
            entry["gate_agreement_all"] = float(gate.mean())
            entry["aux_max_abs_diff"] = float(np.abs(o_aux - p_aux).max())
        report["sets"][name] = entry
        if diff > ATOL:
            problems.append(f"{name}: max |logit diff| {diff:.2e} > {ATOL:g}")
        if entry["top1_agreement_decisive"] < 1.0:
            problems.append(f"{name}: top-1 agreement {entry['top1_agreement_decisive']:.4f}")
        if entry.get("gate_agreement", 1.0) < 1.0:
            problems.append(f"{name}: gate agreement {entry['gate_agreement']:.4f}")
    report["passed"] = not problems
    if problems:
        raise ParityError(f"onnxruntime disagrees with PyTorch for {path}: " + "; ".join(problems))
    return report


def export(model: nn.Module, output: str | Path, opset: int = OPSET, batch: str | int = "dynamic",
           with_softmax: bool = False, with_aux: bool = False, config: dict[str, Any] | None = None,
           eval_json: dict[str, Any] | None = None, real_images: torch.Tensor | None = None,
           eps: float = 8 / 255, seed: int = 0, precision: str = "fp32",
           test: tuple[torch.Tensor, torch.Tensor, str] | None = None,
           calibration: tuple[np.ndarray, str] | None = None,
           quantized_ops: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Export ``model``'s inference path to ``output`` and verify it; returns the parity report.

    ``precision`` ``fp16`` / ``int8`` (:mod:`againzoo.onnx_precision`): the verified fp32 graph is
    converted (int8: calibrated on ``calibration = (training images, description)``), then judged on
    ``test = (images, labels, description)`` by its top-1 agreement with PyTorch and its clean
    accuracy, and written only if it passes; the figures go into the file's ``metadata_props``.
    ``quantized_ops``: the op types int8 quantizes (default: convolutions only; a test quantizes the
    gate too, to see the result refused)."""
    import onnx

    if precision not in P.PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(P.PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and test is None:
        raise ConfigError(f"a {precision} export is judged on test images: none were given (no test split found)")
    if precision == "int8" and calibration is None:
        raise ConfigError("an int8 export is calibrated on training images: none were given (no training split found)")

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSET <= opset <= newest:
        raise ConfigError(f"opset must be an integer from {OPSET} (the dynamo exporter's oldest) to {newest} (the "
                          f"newest this onnx knows), got {opset!r}")
    if batch != "dynamic":
        try:
            batch = int(batch)
        except ValueError:
            raise ConfigError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
        if batch < 1:
            raise ConfigError(f"batch must be 'dynamic' or a positive integer, got {batch}")
    model = model.float().eval().cpu()
    size = tuple(getattr(model, "input_size", None) or (config or {}).get("pretrained_cfg", {}).get("input_size")
                 or model.pretrained_cfg["input_size"])
    output = Path(output)
    writable_dir(output.parent)  # fail before the export, not after it
    with tempfile.TemporaryDirectory(prefix="againzoo-onnx-") as tmp:
        full = Path(tmp) / "full.onnx"
        _export(InferenceGraph(model, with_softmax, True), full, batch, opset, size)
        inputs = _verification_inputs(model, size, real_images, eps, seed)
        report = verify(model, full, inputs, with_softmax, batch)
        mo = onnx.load(str(full))
        if not with_aux:  # the aux output was kept for the gate check; drop it from the deployed graph
            keep = [o for o in mo.graph.output if o.name != "aux_logits"]
            del mo.graph.output[:]
            mo.graph.output.extend(keep)
        meta = {**_metadata(model, config, eval_json, opset), "precision": precision}
        if precision != "fp32":  # convert the verified fp32 graph, judge the result by what a user sees
            onnx.save(mo, str(full))
            low = Path(tmp) / f"{precision}.onnx"
            how = (P.quantize_int8(full, low, calibration[0], quantized_ops or P.QUANTIZED_OPS) if precision == "int8"
                   else P.convert_fp16(full, low))
            figures = P.agreement(low, model, test[0], test[1], precision, output)
            P.check(figures, precision, output)
            mo = onnx.load(str(low))
            meta.update(conversion=json.dumps(how), verification=json.dumps({**figures, "data": test[2]}))
            if precision == "int8":
                meta["calibration"] = calibration[1]
            report["precision_check"] = {**figures, "data": test[2], "conversion": how}
        for k, v in meta.items():
            mo.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(mo, full_check=True)
        tmp_out = output.with_suffix(".onnx.tmp")
        try:
            onnx.save(mo, str(tmp_out))
            tmp_out.replace(output)
        except OSError as e:
            if tmp_out.is_file():
                tmp_out.unlink()
            raise output_error(output, e) from None
    report.update(output=str(output), opset=opset, batch=batch, outputs=[o.name for o in mo.graph.output],
                  exporter="torch.onnx dynamo", precision=precision)
    return report


def export_checkpoint(source: str, output: str | Path, opset: int = OPSET, batch: str | int = "dynamic",
                      with_softmax: bool = False, with_aux: bool = False, data_dir: str | None = None,
                      precision: str = "fp32", n_examples: int = 1000, n_calibration: int = 512) -> dict[str, Any]:
    """``againzoo export``: a run dir (``best/``), checkpoint dir or Hub id -> verified ONNX file. A
    reduced ``precision`` is judged on the first ``n_examples`` test images (the lossless CIFAR-10 ones
    where available) and int8 calibrated on ``n_calibration`` training images."""
    from .errors import DataError
    from .evaluation import eval_data
    from .checkpoint import CONFIG, WEIGHTS
    from .pretrained import from_pretrained

    path = Path(source)
    if path.is_dir() and (path / "best" / CONFIG).exists():
        path = path / "best"
    model, wdir = from_pretrained(str(path) if path.exists() else source, return_dir=True)
    config = {**json.loads((wdir / CONFIG).read_text()), WEIGHTS_KEY: sha256_of(wdir / WEIGHTS)}
    ev = json.loads((wdir / "eval.json").read_text()) if (wdir / "eval.json").exists() else None
    if ev is not None and stale_record(ev, config[WEIGHTS_KEY]):
        ev = None  # another file's numbers never travel in the export's metadata
    recipe = config.get("recipe") or {}
    real = None
    try:
        real = eval_data(config, data_dir, None, 32)[0]
    except DataError:
        pass
    eps = float((recipe.get("attack") or {}).get("eps", 8 / 255))
    test = calibration = None
    if precision != "fp32":
        tx, ty, tdata = eval_data(config, data_dir, None, n_examples)
        test = (tx, ty, tdata["evaluated"])
    if precision == "int8":
        calibration = calibration_images(config, data_dir, n_calibration)
    report = export(model, output, opset, batch, with_softmax, with_aux, config, ev, real, eps,
                    precision=precision, test=test, calibration=calibration)
    report["real_images"] = "first 32 test images" if real is not None else "not available (random and adversarial only)"
    return report


def calibration_images(config: dict[str, Any], data_dir: str | None, n: int = 512,
                       seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` training images of a checkpoint's dataset (a fixed random draw), float32 NCHW in [0, 1], and
    their description: int8 calibration never sees the test images the file is then judged on."""
    from .data import load_dataset

    data = (config.get("recipe") or {}).get("data") or {}
    ds = load_dataset(data.get("dataset", "cifar10"), "train", data_dir or data.get("data_dir"))
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds.y))[:n])
    x = ds.x[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255
    return x, f"{len(idx)} training images of {ds.describe().get('name', data.get('dataset'))} (random, seed {seed})"
