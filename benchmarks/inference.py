"""Inference speed of the deployment forms: PyTorch eager vs onnxruntime fp32, fp16 and int8, latency at
batch 1 and throughput at batch 64, file sizes, in one run, reported as ratios (machines are noisy;
ratios much less so), and where onnxruntime CPU's time goes at batch 64 (kernel time per operator
type, from its profiler). Prints the tables and writes JSON. With onnxruntime-gpu and CUDA it adds the CUDA
provider's rows (where fp16 belongs) and CUDA eager.

With ``--checkpoint`` the files are the real exports of that checkpoint (``againzoo export
--precision ...``: verified against PyTorch on test images, int8 calibrated on training images);
without, an untrained model of ``--arch`` / ``--width`` is exported, its int8 form calibrated on
random images (a speed measurement only: its accuracy means nothing).

    python benchmarks/inference.py                                          # tiny model (what CI runs)
    python benchmarks/inference.py --checkpoint zoo/resnet18_cifar_w16_cpu --data-dir ../shared/data --iters 50
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import againzoo
from againzoo.cpu import cpu_name, int8_instructions
from againzoo.onnx import calibration_images, export, export_checkpoint
from againzoo.onnx_precision import PRECISIONS, PrecisionError, convert_fp16, quantize_int8, session_options


def timeit(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def op_times(path: Path, x: np.ndarray, iters: int, threads: int) -> list[dict[str, float | str]]:
    """Where onnxruntime CPU's time goes: milliseconds per batch in each operator type (its profiler's
    kernel times, the warm-up run left out), largest first, with each one's share of the total."""
    opts = session_options(threads)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(iters + 1):
            sess.run(None, {"images": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm = runs[0]["ts"] + runs[0]["dur"]
    total: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= warm:
            total[e["args"]["op_name"]] = total.get(e["args"]["op_name"], 0.0) + e["dur"] / 1000 / iters
    whole = sum(total.values())
    return [{"op": op, "ms": ms, "share": ms / whole} for op, ms in sorted(total.items(), key=lambda kv: -kv[1])]


def files(args: argparse.Namespace, tmp: Path) -> tuple[torch.nn.Module, dict[str, Path], int, dict[str, str]]:
    """The model, its three ONNX forms (precision -> path), the input size, and the precisions whose
    export the verification refused (precision -> why): those files are made without the check and
    timed all the same, labelled, since their speed is what this measures."""
    out = {p: tmp / f"m_{p}.onnx" for p in PRECISIONS}
    refused: dict[str, str] = {}
    if args.checkpoint:
        model, wdir = againzoo.from_pretrained(args.checkpoint, return_dir=True)
        for p, path in out.items():  # fp32 first: the refused forms are converted from it
            try:
                export_checkpoint(args.checkpoint, path, data_dir=args.data_dir, precision=p, n_examples=args.n)
            except PrecisionError as e:
                refused[p] = str(e)
                if p == "int8":
                    config = json.loads((wdir / "config.json").read_text())
                    quantize_int8(out["fp32"], path, calibration_images(config, args.data_dir)[0])
                else:
                    convert_fp16(out["fp32"], path)
        return model, out, int(model.pretrained_cfg["input_size"][-1]), refused
    model = againzoo.create_model(args.arch, width=args.width,
                                  pretrained_cfg_overlay={"input_size": (3, args.px, args.px)}).eval()
    export(model, out["fp32"])
    convert_fp16(out["fp32"], out["fp16"])
    quantize_int8(out["fp32"], out["int8"], np.random.default_rng(0).random((128, 3, args.px, args.px), np.float32))
    return model, out, args.px, refused


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="again_resnet18")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--px", type=int, default=16)
    p.add_argument("--checkpoint", default=None, help="export and time this checkpoint (a zoo/<id> folder)")
    p.add_argument("--data-dir", default=None, help="its dataset (test images for the checks, calibration)")
    p.add_argument("--n", type=int, default=1000, help="test images the reduced precisions are judged on")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for both runtimes (0 = default)")
    p.add_argument("--json", default="benchmarks/inference.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, paths, px, refused = files(args, Path(tmp))
        opts = session_options(args.threads)
        providers = ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if "CUDAExecutionProvider"
                                                 in ort.get_available_providers() else [])
        runtimes: dict[tuple[str, str], object] = {("torch eager (cpu)", "fp32"): None}
        for prov in providers:
            for prec, path in paths.items():
                runtimes[(f"onnxruntime {prov.removesuffix('ExecutionProvider')}", prec)] = \
                    ort.InferenceSession(str(path), opts, providers=[prov])
        if torch.cuda.is_available():
            runtimes[("torch eager (cuda)", "fp32")] = "cuda"
        sizes = {prec: path.stat().st_size / 2**20 for prec, path in paths.items()}
        rows = []
        for batch in (1, 64):
            x = torch.rand(batch, 3, px, px)
            xn = x.numpy()
            for (name, prec), rt in runtimes.items():
                if rt is None:
                    fn = lambda: model(x)
                elif rt == "cuda":
                    mc, xc = model.cuda(), x.cuda()
                    fn = lambda: (mc(xc), torch.cuda.synchronize())
                else:
                    fn = lambda rt=rt: rt.run(None, {"images": xn})
                with torch.inference_mode():
                    s = timeit(fn, args.iters)
                rows.append({"runtime": name, "precision": prec, "batch": batch, "latency_ms": 1000 * s,
                             "images_per_s": batch / s, "file_mb": None if rt is None or rt == "cuda" else sizes[prec],
                             "refused": None if rt is None or rt == "cuda" else refused.get(prec)})
            model.cpu()
        x64 = np.random.default_rng(0).random((64, 3, px, px), np.float32)
        ops = {prec: op_times(path, x64, args.iters, args.threads) for prec, path in paths.items()}
    base = {r["batch"]: r for r in rows if (r["runtime"], r["precision"]) == ("onnxruntime CPU", "fp32")}
    for r in rows:
        r["speedup_vs_onnxruntime_fp32"] = base[r["batch"]]["latency_ms"] / r["latency_ms"]
    what = args.checkpoint or f"{args.arch} width {args.width} (untrained), {args.px}px"
    machine = f"{cpu_name()} ({int8_instructions() or 'no'} int8 instructions), {torch.get_num_threads()} threads"
    print(f"inference, {what}, {args.iters} iterations, onnxruntime {ort.__version__}, {machine}")
    print(f"{'runtime':<22}{'prec':>6}{'batch':>6}{'ms':>10}{'img/s':>10}{'MB':>8}{'vs ort fp32':>13}")
    for r in rows:
        mb = "-" if r["file_mb"] is None else f"{r['file_mb']:.2f}"
        print(f"{r['runtime']:<22}{r['precision']:>6}{r['batch']:>6}{r['latency_ms']:>10.2f}{r['images_per_s']:>10.0f}"
              f"{mb:>8}{r['speedup_vs_onnxruntime_fp32']:>12.2f}x" + ("  refused by the export check" if r["refused"] else ""))
    print("\nwhere onnxruntime CPU's time goes at batch 64 (its profiler's kernel time per batch)")
    for prec, table in ops.items():
        print(f"{prec:>6}: {sum(o['ms'] for o in table):.2f} ms: "
              + ", ".join(f"{o['op']} {o['ms']:.2f} ({100 * o['share']:.0f}%)" for o in table[:5]))
    for prec, why in refused.items():
        print(f"{prec}: {why}")
    from againzoo.io import atomic_write_json

    untrained_only = ("arch", "width", "px") if args.checkpoint else ()  # options of the untrained model
    config = {k: v for k, v in vars(args).items() if k not in untrained_only}
    atomic_write_json(args.json, {"config": config, "cpu": machine, "results": rows, "ops_batch_64": ops,
                                  "torch": torch.__version__, "onnxruntime": ort.__version__,
                                  "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
