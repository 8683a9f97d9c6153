"""Training throughput: PGD-AT vs AGAIN-PGD-AT vs AGAIN-PGD-AT with weight averaging (timm's
ModelEmaV3 updated after every step), same backbone, batch, precision and attack.

Each variant runs in its own process (so peak memory is its own) through the trainer's real
step, ``againzoo.training.trainer.train_step``. Prints a table and writes JSON.

Under torchrun the variants run one after another in each rank's process, data-parallel (DDP, the
trainer's step), with ``--batch`` the global batch; the table has each rank's and the job's img/s,
and the scaling efficiency when ``--single`` names a one-process JSON of the same settings.

    python benchmarks/train_throughput.py                      # tiny, CPU (what CI runs)
    python benchmarks/train_throughput.py --device cuda --width 64 --px 32 --batch 512 --steps 30
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --device cuda --width 64 --px 32 \
        --batch 4096 --steps 30 --json benchmarks/train_throughput_8gpu.json --single benchmarks/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--single", help="a one-process JSON of this benchmark (same settings) for the scaling efficiency")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # one process group per rank process: the variants run in it, one after another
        from againzoo.training import distributed as dist
        from againzoo.runtime import resolve_device

        env = dist.env_from_launcher()
        created = dist.init(env, resolve_device(dist.local_device(env, args.device)))
        rows = [run_variant(argparse.Namespace(**{**vars(args), "variant": v})) for v in VARIANTS]
        dist.shutdown(created)
        if not env.is_main:
            return
    else:
        rows = []
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", v] + [a for a in sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
    if args.single:
        single = {r["variant"]: r["images_per_s"] for r in json.loads(Path(args.single).read_text())["results"]}
        for r in rows:
            r["scaling_efficiency"] = r["total_images_per_s"] / (r["world_size"] * single[r["variant"]])
    base, again, ema = rows
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("variant", "json")},
              "results": rows, "again_overhead": base["total_images_per_s"] / again["total_images_per_s"] - 1.0,
              "ema_overhead": again["total_images_per_s"] / ema["total_images_per_s"] - 1.0,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    world = base["world_size"]
    print(f"PGD-{args.attack_steps} adversarial training, {args.arch} width {args.width}, {args.px}px, global batch "
          f"{args.batch}, {world} x {base['device']} ({base['precision']})")
    print(f"{'variant':<18}{'img/s/rank':>12}{'total img/s':>13}{'step (s)':>10}{'peak MB':>10}"
          + (f"{'scaling':>9}" if args.single else ""))
    for r in rows:
        print(f"{r['variant']:<18}{r['images_per_s']:>12.1f}{r['total_images_per_s']:>13.1f}{r['step_s']:>10.4f}"
              f"{r['peak_memory_mb']:>10.0f}" + (f"{r['scaling_efficiency']:>9.2f}" if args.single else ""))
    print(f"AGAIN overhead: {100 * result['again_overhead']:+.1f}% ({base['memory_kind']}"
          + (", peak memory of all variants in one process per rank" if distributed else "") + ")")
    print(f"EMA overhead: {100 * result['ema_overhead']:+.1f}% (AGAIN-PGD-AT with vs without weight averaging)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
