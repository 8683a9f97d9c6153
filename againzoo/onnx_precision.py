"""Reduced-precision forms of a verified fp32 ONNX export: int8 for CPUs, fp16 for GPUs, each checked
against PyTorch on test images before it is written.

* **int8**: onnxruntime's static quantization (``quantize_static``) in the QDQ format, per-channel
  int8 weights and uint8 activations, calibrated by MinMax on **training** images (never the test
  images the file is then judged on). Only the convolutions are quantized: the heads and AGAIN's
  gate (``ArgMax -> Gather -> Mul``) stay float, because the gate must choose exactly the channel
  weights PyTorch chooses (quantizing the whole graph fails at run time anyway: a per-axis scale on
  the gate's 2-D Gather). The weights use 7 of their 8 bits (``reduce_range``): on x86 CPUs without
  VNNI (AVX2) onnxruntime sums pairs of uint8 x int8 products in int16, which full-range weights
  overflow (an AMD EPYC with AVX2 ran a full-range file at 91.5% top-1 agreement, where a CPU with
  VNNI had passed); with 7-bit weights the same file is exact on every x86 CPU, so it can be
  deployed anywhere.
* **fp16**: onnxruntime's float16 converter with float32 inputs and outputs (a Cast at each edge),
  so ``export/predict.py`` and users feed and read float32 as before; made for onnxruntime-gpu's
  CUDA provider, and run on the CPU provider for the verification here.

**Verification that fits the precision.** Bit-level parity (the fp32 export's check) cannot hold for
a lower precision, so the file is judged by what a user sees: top-1 agreement with PyTorch on the
test images and the file's own clean accuracy. A file that agrees on fewer than
:data:`MIN_AGREEMENT` of the images, or loses more than :data:`MAX_CLEAN_DROP` of clean accuracy, is
not written (:class:`PrecisionError`, one line saying by how much).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

PRECISIONS = ("fp32", "fp16", "int8")
MIN_AGREEMENT = 0.99
MAX_CLEAN_DROP = 0.01
QUANTIZED_OPS = ("Conv",)


class PrecisionError(CheckpointError):
    """A reduced-precision file disagrees with PyTorch beyond what its precision allows; ``figures`` is
    :func:`agreement`'s report where the file ran (records keep why a precision was refused)."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None):
        super().__init__(message)
        self.figures = figures


def session_options(threads: int = 0):
    """Quiet onnxruntime options with ``threads`` intra-op threads (0: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def session(path: str | Path):
    """A quiet onnxruntime CPU session of ``path`` (the checks here and in :mod:`againzoo.onnx` use it)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def run(path: str | Path, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """The file's first output (logits) for float32 images ``x`` (N, C, H, W), in batches."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch].astype(np.float32)})[0]
                           for i in range(0, len(x), batch)])


class _Calibration:
    """onnxruntime's CalibrationDataReader over an array of images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 64):
        self.batches = iter([{input_name: images[i:i + batch].astype(np.float32)} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8(fp32: str | Path, out: str | Path, calibration: np.ndarray,
                  op_types: tuple[str, ...] = QUANTIZED_OPS) -> dict[str, Any]:
    """Write the int8 (QDQ) form of the fp32 file ``fp32`` to ``out``, calibrated on ``calibration``."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader_cls = type("Calibration", (_Calibration, CalibrationDataReader), {})  # onnxruntime is an optional extra
    with tempfile.TemporaryDirectory(prefix="againzoo-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), reader_cls(calibration, session(fp32).get_inputs()[0].name),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        calibrate_method=CalibrationMethod.MinMax)
    return {"format": "QDQ", "weights": "int8 (7-bit range), per channel", "activations": "uint8, per tensor (MinMax)",
            "quantized_ops": list(op_types)}


def convert_fp16(fp32: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the fp16 form of ``fp32`` to ``out``: float16 weights and arithmetic, float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    _topological_order(model.graph)  # the converter appends the input Casts last; the ONNX checker wants order
    onnx.save(model, str(out))
    return {"weights": "float16", "inputs_outputs": "float32"}


def _topological_order(graph: Any) -> None:
    """Reorder ``graph.node`` in place so that every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise PrecisionError(f"the converted graph has a cycle or a missing input at {rest[0].name!r}")
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def agreement(path: str | Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "",
              target: str | Path = "") -> dict[str, Any]:
    """Top-1 agreement of the file with PyTorch (fp32) and the clean accuracy of both, on ``x``; a file
    onnxruntime cannot run is a :class:`PrecisionError` (one line)."""
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()
    ref = logits.argmax(1)
    try:
        got = run(path, x.numpy()).argmax(1)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds (Fail, RuntimeException, ...)
        first = " ".join(str(e).split())[:300]
        raise PrecisionError(f"the {precision} file for {target or path} was not written: onnxruntime cannot run it "
                             f"({first})") from None
    labels = y.numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # PyTorch's top-1 minus second logit
    flipped = got != ref
    # how close to a tie the disagreements are: a rounding-noise file flips only near-tied images
    widest = float(margin[flipped].max()) if flipped.any() else 0.0
    return {"n": int(len(labels)), "top1_agreement": float((~flipped).mean()),
            "clean_acc": float((got == labels).mean()), "torch_clean_acc": float((ref == labels).mean()),
            "flipped_max_margin": widest, "near_tie_share": float((margin <= widest).mean()) if flipped.any() else 0.0}


def check(report: dict[str, Any], precision: str, path: str | Path) -> None:
    """Refuse a file whose agreement or clean accuracy is below what its precision allows."""
    drop = report["torch_clean_acc"] - report["clean_acc"]
    if report["top1_agreement"] < MIN_AGREEMENT - 1e-9 or drop > MAX_CLEAN_DROP + 1e-9:  # fractions of counts
        raise PrecisionError(
            f"the {precision} file for {path} was not written: it agrees with PyTorch on "
            f"{100 * report['top1_agreement']:.1f}% of {report['n']} test images (at least {100 * MIN_AGREEMENT:.0f}% "
            f"required) and its clean accuracy is {100 * report['clean_acc']:.1f}% against PyTorch's "
            f"{100 * report['torch_clean_acc']:.1f}% ({100 * drop:+.1f} points lost, at most {100 * MAX_CLEAN_DROP:.0f} "
            f"allowed){_near_ties(report)}", report)


def _near_ties(report: dict[str, Any]) -> str:
    """Where the disagreements lie, when the report says (older records do not)."""
    if not report.get("flipped_max_margin"):
        return ""
    return (f"; every disagreement is on an image whose top-1 logit leads the second by at most "
            f"{report['flipped_max_margin']:.3f}, as {100 * report['near_tie_share']:.1f}% of the images do")
