"""Training throughput: PGD-AT vs AGAIN-PGD-AT vs AGAIN-PGD-AT with weight averaging (timm's
ModelEmaV3 updated after every step), same backbone, batch, precision and attack.

Each variant runs in its own process (so peak memory is its own) through the trainer's real
step, ``againzoo.training.trainer.train_step``. Prints a table and writes JSON. ``--variants``
picks others: ``again_pgd_at_checked`` (the model's per-step value checks on: the host syncs the
trainer turns off), ``pgd_at_compiled`` / ``again_pgd_at_compiled`` (``compile: true``, torch.compile
of the backbone), ``*_cudagraphs`` (``compile_mode: reduce-overhead``: CUDA graphs on CUDA), and any
other combination of the suffixes (``again_pgd_at_ema_compiled``). Each row has the host syncs of one
step (``againzoo.host_sync``; the step is meant to have none). ``--profile`` adds, per variant, where the step's time goes by op family
(torch.profiler, device time on CUDA, CPU time on the CPU): convolutions, BN, matmuls (heads),
elementwise (the attack's update, HFF), reductions (HFF statistics, pooling), the optimiser, random
draws, copies and host syncs.

Under torchrun the variants run one after another in each rank's process, data-parallel (DDP, the
trainer's step), with ``--batch`` the global batch; the table has each rank's and the job's img/s,
and the scaling efficiency when ``--single`` names a one-process JSON of the same settings.

    python benchmarks/train_throughput.py                      # tiny, CPU (what CI runs)
    python benchmarks/train_throughput.py --variants again_pgd_at,again_pgd_at_checked --profile
    python benchmarks/train_throughput.py --device cuda --width 64 --px 32 --batch 512 --steps 30
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --device cuda --width 64 --px 32 \
        --batch 4096 --steps 30 --json benchmarks/train_throughput_8gpu.json --single benchmarks/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("pgd_at", "again_pgd_at", "again_pgd_at_ema")
EXTRA = ("again_pgd_at_checked", "pgd_at_compiled", "again_pgd_at_compiled", "pgd_at_cudagraphs",
         "again_pgd_at_cudagraphs", "again_pgd_at_ema_compiled")
# the CPU tier's question (--cpu): what speeds up a single-step adversarial training step on a CPU,
# each row against the first (today's fp32 eager, contiguous step with the data loader inline)
CPU_VARIANTS = ("n_fgsm_fp32_loader", "n_fgsm_fp32_cl_loader", "n_fgsm_bf16_loader", "n_fgsm_bf16_cl_loader",
                "n_fgsm_bf16_cl", "n_fgsm_bf16_cl_compiled_loader", "n_fgsm_bf16_cl_b64_loader",
                "n_fgsm_bf16_cl_b256_loader", "n_fgsm_bf16_cl_t1_loader", "fgsm_rs_bf16_cl_loader",
                "pgd_at_bf16_cl_loader", "again_n_fgsm_bf16_cl_loader")
BASES = ("again_pgd_at", "pgd_at", "again_fgsm_rs", "fgsm_rs", "again_n_fgsm", "n_fgsm")
# a variant is a base followed by any of these suffixes (the recipe keys or settings they set)
SUFFIXES = {"_ema": {"ema": {"decay": 0.999}}, "_checked": {}, "_fp32": {"precision": "fp32"},
            "_bf16": {"precision": "bf16"}, "_cl": {"channels_last": True},
            "_compiled": {"compile": True}, "_cudagraphs": {"compile": True, "compile_mode": "reduce-overhead"},
            "_loader": {}}
SIZED = re.compile(r"_(b|t)(\d+)")  # _b256: batch 256; _t1: one intra-op thread
SPEEDUPS = ("_compiled", "_cudagraphs")  # compared with the same variant without the suffix


def variant_settings(v: str) -> dict | None:
    """What a variant name sets: ``again`` (AGAIN on), ``method``, ``keys`` (recipe keys), ``checked``
    (value checks on), ``loader`` (the data loader inline), ``batch`` / ``threads`` (or None), or None
    when the name is not a variant."""
    base = next((b for b in BASES if v == b or v.startswith(b + "_")), None)
    if base is None:
        return None
    rest = v[len(base):]
    out = {"again": base.startswith("again_"), "method": base.removeprefix("again_"), "keys": {}, "checked": False,
           "loader": False, "batch": None, "threads": None}
    while rest:
        suffix = next((sfx for sfx in SUFFIXES if rest == sfx or rest.startswith(sfx + "_")), None)
        if suffix is not None:
            out["keys"].update(SUFFIXES[suffix])
            out["checked"] |= suffix == "_checked"
            out["loader"] |= suffix == "_loader"
            rest = rest[len(suffix):]
            continue
        m = SIZED.match(rest)
        if m is None or (rest[m.end():] and not rest[m.end():].startswith("_")):
            return None
        out["batch" if m.group(1) == "b" else "threads"] = int(m.group(2))
        rest = rest[m.end():]
    return out


# op-name patterns (lower case) -> family, first match wins
FAMILIES = (("host sync", ("_local_scalar_dense", "item", "synchronize", "aminmax")),
            ("optimizer", ("_foreach", "fused_sgd", "sgd", "adam")),
            ("convolution", ("conv",)),
            ("batch norm", ("batch_norm",)),
            ("matmul (heads)", ("addmm", "mm", "linear", "matmul", "bmm")),
            ("random", ("randperm", "rand", "uniform", "normal", "bernoulli", "randint")),
            ("reductions (HFF stats, pooling)", ("mean", "var", "sum", "std", "amax", "amin", "avg_pool", "adaptive")),
            ("copy / layout", ("copy", "to_copy", "contiguous", "clone", "cat", "stack")),
            ("elementwise (attack, HFF, gate)", ("add", "mul", "sub", "div", "sign", "clamp", "where", "sqrt",
                                                 "relu", "threshold", "neg", "exp", "log", "softmax", "index", "gather",
                                                 "fill", "zero", "ge", "lt", "gt", "le", "eq")))


def family(name: str) -> str:
    n = name.lower()
    return next((fam for fam, pats in FAMILIES if any(p in n for p in pats)), "other")


def profile_step(step, steps: int, device: torch.device) -> dict:
    """Time per training step by op family (self time, so nothing is counted twice)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    fams: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, key, 0.0) or 0.0
        if e.key.startswith("ProfilerStep") or t <= 0:
            continue
        fams[family(e.key)] = fams.get(family(e.key), 0.0) + t / 1000.0 / steps
    total = sum(fams.values()) or 1.0
    return {"time": "device" if device.type == "cuda" else "cpu", "ms_per_step": dict(sorted(fams.items(), key=lambda kv: -kv[1])),
            "share": {k: v / total for k, v in fams.items()}}


def run_variant(args: argparse.Namespace) -> dict:
    from againzoo import recipes
    from againzoo.training.throughput import measure

    v = args.variant
    st = variant_settings(v)
    if st["threads"]:
        torch.set_num_threads(st["threads"])
    attack = ({"eps": "8/255", "step_size": "2/255", "steps": args.attack_steps} if st["method"] == "pgd_at"
              else {"eps": "8/255"})
    r = recipes.parse({
        "name": "bench",
        "model": {"arch": args.arch, "kwargs": {"width": args.width}, "again": {"enabled": st["again"]}},
        "method": {"name": st["method"]}, "attack": attack,
        "precision": args.precision, "batch_size": st["batch"] or args.batch, **st["keys"],
    })
    hooks = {"validate_values": st["checked"], "profile": profile_step if args.profile else None,
             "loader": st["loader"]}
    return {"variant": v, "threads": torch.get_num_threads(), "batch": r.batch_size,
            **measure(r, args.device, (3, args.px, args.px), 10, args.steps, args.warmup, **hooks)}


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
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, e.g. {', '.join(VARIANTS + EXTRA)}: one of {', '.join(BASES)} followed "
                        f"by any of {', '.join(SUFFIXES)}, _b<batch>, _t<threads>")
    p.add_argument("--profile", action="store_true", help="also time each variant's step by op family (torch.profiler)")
    p.add_argument("--cpu", action="store_true",
                   help=f"the CPU tier's variants ({', '.join(CPU_VARIANTS)}), each against the first")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    chosen = CPU_VARIANTS if args.cpu else tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in chosen + ((args.variant,) if args.variant else ()) if variant_settings(v) is None]
    if unknown:
        sys.exit(f"error: unknown variants {unknown}; for example: {', '.join(VARIANTS + EXTRA)}")
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # one process group per rank process: the variants run in it, one after another
        from againzoo.training import distributed as dist
        from againzoo.runtime import resolve_device

        env = dist.env_from_launcher()
        created = dist.init(env, resolve_device(dist.local_device(env, args.device)))
        rows = [run_variant(argparse.Namespace(**{**vars(args), "variant": v})) for v in chosen]
        dist.shutdown(created)
        if not env.is_main:
            return
    else:  # one process per variant; the JSON is rewritten after each, and a variant that fails
        rows = []  # (a compile error, a timeout of the whole script) leaves the others' rows behind
        for v in chosen:
            cmd = [sys.executable, __file__, "--variant", v] + [a for a in sys.argv[1:]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            lines = res.stdout.strip().splitlines()
            if res.returncode == 0 and lines:
                rows.append(json.loads(lines[-1]))
            else:
                err = (res.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"variant": v, "error": f"exit {res.returncode}: {err[:500]}"})
            write_json(args, summarise(args, rows, complete=len(rows) == len(chosen)))
    result = summarise(args, rows, complete=True)
    rows = result["results"]
    if not rows:
        sys.exit("error: every variant failed: " + "; ".join(r["error"] for r in result["failed"]))
    base = rows[0]
    world = base["world_size"]
    print(f"adversarial training steps (PGD-{args.attack_steps} for pgd_at), {args.arch} width {args.width}, "
          f"{args.px}px, global batch {args.batch} unless a variant says, {world} x {base['device']}")
    print(f"{'variant':<34}{'prec':>6}{'thr':>5}{'batch':>7}{'img/s/rank':>12}{'total img/s':>13}{'x first':>9}"
          f"{'step (s)':>10}{'peak MB':>10}{'syncs/step':>12}" + (f"{'scaling':>9}" if args.single else ""))
    for r in rows:
        syncs = "-" if r.get("host_syncs_per_step") is None else str(r["host_syncs_per_step"])
        print(f"{r['variant']:<34}{r['precision']:>6}{r.get('threads', '-'):>5}{r.get('batch', args.batch):>7}"
              f"{r['images_per_s']:>12.1f}{r['total_images_per_s']:>13.1f}{r['vs_first']:>9.2f}{r['step_s']:>10.4f}"
              f"{r['peak_memory_mb']:>10.0f}{syncs:>12}" + (f"{r['scaling_efficiency']:>9.2f}" if args.single else ""))
    if result["again_overhead"] is not None:
        print(f"AGAIN overhead: {100 * result['again_overhead']:+.1f}% ({base['memory_kind']}"
              + (", peak memory of all variants in one process per rank" if distributed else "") + ")")
    if result["ema_overhead"] is not None:
        print(f"EMA overhead: {100 * result['ema_overhead']:+.1f}% (AGAIN-PGD-AT with vs without weight averaging)")
    if result["checks_overhead"] is not None:
        print(f"value-check overhead: {100 * result['checks_overhead']:+.1f}% (per-step host syncs on vs off)")
    for k, v in result["compile_speedup"].items():
        print(f"{k}: {v:.2f}x the eager rate")
    for r in rows:
        if r.get("profile"):
            prof = r["profile"]
            print(f"\nwhere {r['variant']}'s step goes ({prof['time']} time, ms per step):")
            for fam, ms in prof["ms_per_step"].items():
                print(f"  {fam:<34}{ms:>10.2f}{100 * prof['share'][fam]:>8.1f}%")
    for r in result["failed"]:
        print(f"{r['variant']} failed: {r['error']}")
    write_json(args, result)


def summarise(args: argparse.Namespace, rows: list[dict], complete: bool) -> dict:
    """The JSON record: the rows that ran, the ratios between them, the variants that failed."""
    ok = [r for r in rows if "error" not in r]
    if args.single:
        single = {r["variant"]: r["images_per_s"] for r in json.loads(Path(args.single).read_text())["results"]}
        for r in ok:
            r["scaling_efficiency"] = r["total_images_per_s"] / (r["world_size"] * single[r["variant"]])
    by = {r["variant"]: r["total_images_per_s"] for r in ok}
    for r in ok:  # every row against the first that ran (the baseline: today's default step)
        r["vs_first"] = r["total_images_per_s"] / ok[0]["total_images_per_s"]
    ratio = lambda a, b: by[a] / by[b] - 1.0 if a in by and b in by else None  # noqa: E731
    return {"config": {k: v for k, v in vars(args).items() if k not in ("variant", "json")},
            "results": ok, "failed": [r for r in rows if "error" in r], "complete": complete,
            "again_overhead": ratio("pgd_at", "again_pgd_at"),
            "ema_overhead": ratio("again_pgd_at", "again_pgd_at_ema"),
            "checks_overhead": ratio("again_pgd_at", "again_pgd_at_checked"),
            "compile_speedup": {v: by[v] / by[v[:-len(sfx)]] for v in by for sfx in SPEEDUPS
                                if v.endswith(sfx) and v[:-len(sfx)] in by},
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def write_json(args: argparse.Namespace, result: dict) -> None:
    """Write the record in one piece."""
    from againzoo.io import atomic_write_json

    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
