"""Torch-free inference for againzoo ONNX models: numpy, Pillow and onnxruntime only.

    python export/predict.py model.onnx cat.png dog.jpg            # labels and probabilities
    python export/predict.py model.onnx --npy batch.npy --top 3     # an (N, C, H, W) float array
    python export/predict.py model_int8.onnx --info                 # its precision (fp32, fp16, int8), provider, input

    from predict import Predictor
    p = Predictor("model.onnx")
    result = p.predict(images)   # float32 (N, C, H, W) in [0, 1], uint8 arrays, paths or PIL images

Uses ``CUDAExecutionProvider`` when onnxruntime-gpu is installed, else ``CPUExecutionProvider``.
Bad input (wrong rank, channel count, size or dtype, NaN/Inf, values outside [0, 1]) raises
``InputError`` before onnxruntime sees it; ``clamp=True`` clips out-of-range values instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnxruntime as ort


class InputError(ValueError):
    """The input cannot be fed to the model; the message says what was expected."""


@dataclass
class Prediction:
    labels: list[str]
    indices: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, num_classes) float32
    names: Sequence[str] = ()  # all class names, in index order

    def top(self, k: int = 1) -> list[list[tuple[str, float]]]:
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.names[j], float(self.probabilities[i, j])) for j in row] for i, row in enumerate(order)]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Load an exported againzoo model and classify images.

    Args:
        path: the .onnx file (with againzoo metadata: input size, class names).
        providers: onnxruntime providers; default CUDA when available, else CPU.
        batch_size: images per onnxruntime call (a fixed-batch model uses its own and pads).
        clamp: clip values outside [0, 1] instead of rejecting them.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, batch_size: int = 64,
                 clamp: bool = False):
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not Path(path).is_file():
            raise InputError(f"model file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds for a bad file
            raise InputError(f"cannot load {path} as an ONNX model: {' '.join(str(e).split())[:200]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        size = json.loads(meta.get("input_size", "[]")) or [d for d in inp.shape[1:]]
        self.channels, self.height, self.width = (int(v) for v in size)
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.batch_size = self.fixed_batch or batch_size
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_is_probability = outputs[0] == "probabilities"
        names = json.loads(meta.get("class_names", "[]"))
        n_out = self.session.get_outputs()[0].shape[1]
        self.class_names = names or [str(i) for i in range(int(n_out))]
        self.metadata = meta
        self.clamp = clamp

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def precision(self) -> str:
        """fp32, fp16 or int8: what ``againzoo export --precision`` wrote (files before it: fp32)."""
        return self.metadata.get("precision", "fp32")

    # -- preprocessing ---------------------------------------------------------------------
    def _load_image(self, item: Any) -> np.ndarray:
        from PIL import Image

        try:
            img = item if isinstance(item, Image.Image) else Image.open(item)
            img = img.convert("RGB" if self.channels == 3 else "L")  # grayscale, palette, RGBA: converted
        except Image.DecompressionBombError as e:  # a huge image: refused before it is decoded
            raise InputError(f"{item}: {e}") from None
        except OSError as e:  # a missing file, or not an image PIL can read
            raise InputError(f"{item}: not a readable image ({e})") from None
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def preprocess(self, images: Any) -> np.ndarray:
        """-> float32 (N, C, H, W) in [0, 1], or InputError."""
        if isinstance(images, (str, Path)) or type(images).__module__.startswith("PIL"):
            images = [images]
        if isinstance(images, (list, tuple)) and images and not isinstance(images[0], np.ndarray):
            return np.stack([self._load_image(i) for i in images])
        arr = np.asarray(images) if not isinstance(images, np.ndarray) else images
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype not in (np.float32, np.float64):
            raise InputError(f"expected float32 images in [0, 1] or uint8 images, got dtype {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise InputError(f"expected an array of shape (N, {self.channels}, {self.height}, {self.width}) "
                             f"or ({self.channels}, {self.height}, {self.width}), got {arr.shape}")
        if arr.shape[1] != self.channels:
            raise InputError(f"expected {self.channels} channels first (N, {self.channels}, H, W), got shape {arr.shape}")
        if arr.shape[2:] != (self.height, self.width):
            raise InputError(f"expected {self.height}x{self.width} images, got {arr.shape[2]}x{arr.shape[3]} "
                             "(resize first, or pass image files, which are resized)")
        if not np.isfinite(arr).all():
            raise InputError("input contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            if not self.clamp:
                raise InputError(f"expected values in [0, 1], got [{lo:.3g}, {hi:.3g}] (scale by 1/255, or clamp=True)")
            arr = np.clip(arr, 0.0, 1.0)
        return np.ascontiguousarray(arr, dtype=np.float32)

    # -- inference -------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.batch_size):
            xb = x[i:i + self.batch_size]
            n = len(xb)
            if self.fixed_batch and n < self.fixed_batch:  # pad a fixed-batch model's last call
                xb = np.concatenate([xb, np.zeros((self.fixed_batch - n,) + xb.shape[1:], np.float32)])
            out.append(self.session.run(None, {self.input_name: xb})[0][:n])
        return np.concatenate(out)

    def predict(self, images: Any) -> Prediction:
        x = self.preprocess(images)
        scores = self.logits(x)
        probs = scores if self.output_is_probability else _softmax(scores)
        idx = probs.argmax(axis=1)
        return Prediction([self.class_names[i] for i in idx], idx, probs.astype(np.float32), self.class_names)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Classify images with an againzoo ONNX model (no torch needed).")
    ap.add_argument("model", help="the .onnx file")
    ap.add_argument("images", nargs="*", help="image files")
    ap.add_argument("--npy", help="an .npy array (N, C, H, W) float in [0, 1] or uint8")
    ap.add_argument("--top", type=int, default=1)
    ap.add_argument("--clamp", action="store_true", help="clip values outside [0, 1] instead of failing")
    ap.add_argument("--json", action="store_true", help="print JSON lines")
    ap.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                    help="onnxruntime provider: cuda needs onnxruntime-gpu (default: cuda when available)")
    ap.add_argument("--info", action="store_true", help="print the file's precision, provider, input and classes")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if not args.images and not args.npy and not args.info:
        ap.error("give image files or --npy (or --info)")
    try:
        if args.top < 1:
            raise InputError(f"--top must be >= 1, got {args.top}")
        providers = None if args.provider == "auto" else [f"{args.provider.upper()}ExecutionProvider"]
        if args.provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError("--provider cuda needs onnxruntime-gpu with a CUDA device; this onnxruntime offers "
                             f"{', '.join(ort.get_available_providers())} (pip install onnxruntime-gpu)")
        p = Predictor(args.model, providers=providers, clamp=args.clamp)
        if args.info:
            print(f"{args.model}: {p.precision}, {p.provider}, input {p.channels}x{p.height}x{p.width}, "
                  f"{len(p.class_names)} classes")
            if not args.images and not args.npy:
                return 0
        inputs = np.load(args.npy, allow_pickle=False) if args.npy else list(args.images)
        result = p.predict(inputs)
    except (InputError, OSError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    names = args.images or [f"{args.npy}[{i}]" for i in range(len(result.labels))]
    try:
        for name, top in zip(names, result.top(args.top)):
            if args.json:
                print(json.dumps({"input": name, "top": [{"label": l, "probability": pr} for l, pr in top]}))
            else:
                print(name, " ".join(f"{l}:{pr:.4f}" for l, pr in top))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
