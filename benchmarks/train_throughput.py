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
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("pgd_at", "again_pgd_at", "again_pgd_at_ema")


def run_variant(args: argparse.Namespace) -> dict:
    from againzoo import recipes
    from againzoo.training.throughput import measure

    r = recipes.parse({
        "name": "bench",
        "model": {"arch": args.arch, "kwargs": {"width": args.width}, "again": {"enabled": args.variant != "pgd_at"}},
        "attack": {"eps": "8/255", "step_size": "2/255", "steps": args.attack_steps},
        "precision": args.precision, "batch_size": args.batch,
        "ema": {"decay": 0.999} if args.variant.endswith("_ema") else None,
    })
    return {"variant": args.variant, **measure(r, args.device, (3, args.px, args.px), 10, args.steps, args.warmup)}


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
