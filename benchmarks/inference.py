"""Inference speed: PyTorch eager vs onnxruntime, latency at batch 1 and throughput at batch 64,
in one run, reported as ratios (machines are noisy; ratios much less so). Prints a table and
writes JSON. On a machine with onnxruntime-gpu and CUDA it adds the CUDA provider and CUDA eager.

    python benchmarks/inference.py                                      # tiny model (what CI runs)
    python benchmarks/inference.py --width 64 --px 32 --iters 50        # ResNet-18 size
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

import againzoo
from againzoo.onnx import export


def timeit(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="again_resnet18")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--px", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for both runtimes (0 = default)")
    p.add_argument("--json", default="benchmarks/inference.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = againzoo.create_model(args.arch, width=args.width,
                                  pretrained_cfg_overlay={"input_size": (3, args.px, args.px)}).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export(model, path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if args.threads:
            opts.intra_op_num_threads = args.threads
        runtimes = {"torch eager (cpu)": None, "onnxruntime CPU": ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])}
        if "CUDAExecutionProvider" in ort.get_available_providers():
            runtimes["onnxruntime CUDA"] = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider"])
        if torch.cuda.is_available():
            runtimes["torch eager (cuda)"] = "cuda"
        rows = []
        for batch in (1, 64):
            x = torch.rand(batch, 3, args.px, args.px)
            xn = x.numpy()
            for name, rt in runtimes.items():
                if rt is None:
                    fn = lambda: model(x)
                elif rt == "cuda":
                    mc, xc = model.cuda(), x.cuda()
                    fn = lambda: (mc(xc), torch.cuda.synchronize())
                else:
                    fn = lambda rt=rt: rt.run(None, {"images": xn})
                with torch.inference_mode():
                    s = timeit(fn, args.iters)
                rows.append({"runtime": name, "batch": batch, "latency_ms": 1000 * s, "images_per_s": batch / s})
            model.cpu()
    base = {r["batch"]: r for r in rows if r["runtime"] == "torch eager (cpu)"}
    for r in rows:
        r["speedup_vs_torch_cpu"] = base[r["batch"]]["latency_ms"] / r["latency_ms"]
    print(f"inference, {args.arch} width {args.width}, {args.px}px, {args.iters} iterations")
    print(f"{'runtime':<22}{'batch':>6}{'ms':>10}{'img/s':>10}{'vs torch cpu':>14}")
    for r in rows:
        print(f"{r['runtime']:<22}{r['batch']:>6}{r['latency_ms']:>10.2f}{r['images_per_s']:>10.0f}{r['speedup_vs_torch_cpu']:>13.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"config": vars(args), "results": rows, "torch": torch.__version__,
                                           "onnxruntime": ort.__version__, "date": time.strftime("%Y-%m-%d")},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
