"""Training throughput: PGD-AT vs AGAIN-PGD-AT vs AGAIN-PGD-AT with weight averaging (timm's
ModelEmaV3 updated after every step), same backbone, batch, precision and attack.

Each variant runs in its own process (so peak memory is its own) through the trainer's real
step, ``againzoo.training.trainer.train_step``. Prints a table and writes JSON.

    python benchmarks/train_throughput.py                      # tiny, CPU (what CI runs)
    python benchmarks/train_throughput.py --device cuda --width 64 --px 32 --batch 512 --steps 30
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("pgd_at", "again_pgd_at", "again_pgd_at_ema")


def run_variant(args: argparse.Namespace) -> dict:
    from againzoo import recipes
    from againzoo.training.methods import METHODS, StepContext
    from againzoo.training.trainer import make_ema, make_model, make_optimizer, resolve_device, train_step

    dev = resolve_device(args.device)
    again = args.variant != "pgd_at"
    r = recipes.parse({
        "name": "bench", "model": {"arch": args.arch, "kwargs": {"width": args.width}, "again": {"enabled": again}},
        "attack": {"eps": "8/255", "step_size": "2/255", "steps": args.attack_steps},
        "precision": args.precision, "batch_size": args.batch,
        "ema": {"decay": 0.999} if args.variant.endswith("_ema") else None,
    })
    torch.manual_seed(0)
    overlay = {"pretrained_cfg_overlay": {"input_size": (3, args.px, args.px)}}
    model = make_model(r, 10, {**r.model.kwargs, **overlay}).to(dev)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and dev.type == "cuda")
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(r, model, dev)
    ema = make_ema(r, model)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else __import__("contextlib").nullcontext
    x = torch.rand(args.batch, 3, args.px, args.px, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = StepContext(model, r.attack, again, 1.0, 0.0, autocast)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(args.warmup):
        train_step(ctx, METHODS["pgd_at"], opt, x, y, ema=ema, step=i + 1)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.steps):
        train_step(ctx, METHODS["pgd_at"], opt, x, y, ema=ema, step=args.warmup + i + 1)
    sync()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": args.variant, "images_per_s": args.batch * args.steps / dt, "step_s": dt / args.steps,
            "peak_memory_mb": peak / 2**20, "memory_kind": "cuda max_allocated" if dev.type == "cuda" else "process max RSS",
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "precision": "bf16" if bf16 else "fp32"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18_cifar")
    p.add_argument("--width", type=int, default=8, help="ResNet base width (64 = standard ResNet-18)")
    p.add_argument("--px", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--json", default="benchmarks/train_throughput.json")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    rows = []
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", v] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base, again, ema = rows
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("variant", "json")},
              "results": rows, "again_overhead": base["images_per_s"] / again["images_per_s"] - 1.0,
              "ema_overhead": again["images_per_s"] / ema["images_per_s"] - 1.0,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"PGD-{args.attack_steps} adversarial training, {args.arch} width {args.width}, {args.px}px, batch {args.batch}, "
          f"{base['device']} ({base['precision']})")
    print(f"{'variant':<18}{'img/s':>10}{'step (s)':>10}{'peak MB':>10}")
    for r in rows:
        print(f"{r['variant']:<18}{r['images_per_s']:>10.1f}{r['step_s']:>10.4f}{r['peak_memory_mb']:>10.0f}")
    print(f"AGAIN overhead: {100 * result['again_overhead']:+.1f}% ({base['memory_kind']})")
    print(f"EMA overhead: {100 * result['ema_overhead']:+.1f}% (AGAIN-PGD-AT with vs without weight averaging)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
