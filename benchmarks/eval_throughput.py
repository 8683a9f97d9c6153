"""Evaluation throughput: images/s of PGD-20 alone (with contiguous and with channels_last inputs),
of the ``quick`` suite (our APGD-CE/APGD-T in every mode + the gate attack), of the official
AutoAttack (``aa`` suite: pyautoattack's standard AA with the hard and the straight-through gate) and
of the ``paper`` suite, with the ratio of the official AA's time to our quick suite's.

Runs the real evaluator (``againzoo.evaluation.evaluate``) on random images with a freshly built
model (throughput does not depend on the weights much, only on how many examples stay robust, so
the numbers are a lower bound for robust models: every example survives every attack). Prints a
table and writes JSON. ``--suites`` picks the suites (``--suites ""``: PGD-20 only).

Our attacks against the training step (issue 21: "our own attacks as fast as the training step"):
PGD-20 makes 20 forward-backward passes per image, a PGD-10 training step 11 (10 to craft, one to
train), so ``--vs-train train_throughput.json`` compares passes/s of PGD-20 with the training
benchmark's rows of the same run (evaluation in fp32, training in its recipe's precision).

    python benchmarks/eval_throughput.py                                  # tiny, CPU (what CI runs)
    python benchmarks/eval_throughput.py --device cuda --width 64 --px 32 --n 1000 --suites quick \
        --vs-train train_throughput.json                                  # the GPU window's step
    python benchmarks/eval_throughput.py --device cuda --width 64 --px 32 --n 10000 --full-budget
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import againzoo
from againzoo.evaluation import AttackSpec, evaluate, run_attack
from againzoo.io import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="again_resnet18")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--px", type=int, default=16)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--full-budget", action="store_true", help="standard budgets (APGD/FAB 100 iters, 9 targets, "
                   "Square 5000 queries)")
    p.add_argument("--suites", default="quick,aa,paper", help="comma-separated suites after PGD-20 ('' for none)")
    p.add_argument("--vs-train", metavar="JSON", help="a train_throughput.py record to compare passes/s with")
    p.add_argument("--json", default="benchmarks/eval_throughput.json")
    args = p.parse_args()
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - {"quick", "aa", "paper"})
    if unknown:
        p.error(f"--suites: unknown suite {unknown[0]!r} (expected quick, aa, paper)")
    train = json.loads(Path(args.vs_train).read_text()) if args.vs_train else None
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = againzoo.create_model(args.arch, width=args.width,
                                  pretrained_cfg_overlay={"input_size": (3, args.px, args.px)}).to(dev).eval()
    x = torch.rand(args.n, 3, args.px, args.px, device=dev)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example starts correctly classified
    budget = {} if args.full_budget else {"aa_iter": 10, "n_targets": 2, "pgd_steps": (2, 4), "cw_steps": 2,
                                          "aa_budget": {"n_iter": 10, "n_targets": 2, "n_queries": 20}}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    spec = AttackSpec("PGD-20", "pgd", "joint", 20)
    layouts = (("", x), (", channels_last", x.contiguous(memory_format=torch.channels_last)))
    for _, xs in layouts:  # warm-up: the first call of each layout pays for kernel selection
        run_attack(AttackSpec("PGD-2", "pgd", "joint", 2), model, xs[:args.batch], y[:args.batch], 8 / 255, "Linf", gen)
    for layout, xs in layouts:
        sync()
        t = time.perf_counter()
        for i in range(0, args.n, args.batch):
            run_attack(spec, model, xs[i:i + args.batch], y[i:i + args.batch], 8 / 255, "Linf", gen)
        sync()
        seconds = time.perf_counter() - t
        rows.append({"what": f"PGD-20 (joint loss{layout})", "seconds": seconds, "images_per_s": args.n / seconds,
                     "grad_passes_per_s": args.n * spec.steps / seconds})
    vs_train = compare_with_training(rows, train, args) if train else None
    record = write_json(args, rows, vs_train)  # rewritten after each suite: a timeout keeps what ran
    for suite in suites:
        sync()
        t = time.perf_counter()
        evaluate(model, x, y, suite, 8 / 255, batch_size=args.batch, progress=False, checks=False, **budget)
        sync()
        seconds = time.perf_counter() - t
        rows.append({"what": f"{suite} suite", "seconds": seconds, "images_per_s": args.n / seconds})
        record = write_json(args, rows, vs_train)
    print(f"evaluation throughput, {args.arch} width {args.width}, {args.px}px, n={args.n}, {dev} "
          f"({'standard' if args.full_budget else 'reduced'} budgets)")
    print(f"{'what':<36}{'seconds':>10}{'img/s':>10}{'passes/s':>11}")
    for r in rows:
        passes = f"{r['grad_passes_per_s']:>11.0f}" if "grad_passes_per_s" in r else f"{'-':>11}"
        print(f"{r['what']:<36}{r['seconds']:>10.2f}{r['images_per_s']:>10.1f}{passes}")
    print(f"PGD-20 with channels_last inputs: {record['channels_last_speedup']:.2f}x the contiguous rate")
    if record["aa_over_quick"] is not None:
        print(f"official AutoAttack (hard + straight-through gate) / our quick suite: {record['aa_over_quick']:.2f}x the time")
    for c in vs_train or []:
        print(f"PGD-20 (fastest layout, fp32) / {c['variant']} training step ({c['precision']}, "
              f"{c['train_grad_passes_per_s']:.0f} passes/s): {c['eval_over_train']:.2f}x")


def write_json(args: argparse.Namespace, rows: list[dict], vs_train: list[dict] | None) -> dict:
    """The record of the rows so far, written in one piece."""
    secs = {r["what"]: r["seconds"] for r in rows}
    record = {"config": vars(args), "results": rows,
              "aa_over_quick": secs["aa suite"] / secs["quick suite"] if {"aa suite", "quick suite"} <= secs.keys() else None,
              "channels_last_speedup": secs["PGD-20 (joint loss)"] / secs["PGD-20 (joint loss, channels_last)"],
              "vs_train": vs_train, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(args.json, record)
    return record


def compare_with_training(pgd_rows: list[dict], train: dict, args: argparse.Namespace) -> list[dict]:
    """Forward-backward passes/s of PGD-20 (its faster layout) over each training row's: a PGD-k
    training step makes k + 1 passes per image."""
    cfg = train["config"]
    if (cfg["width"], cfg["px"]) != (args.width, args.px):
        sys.exit(f"error: --vs-train {args.vs_train} measured width {cfg['width']} at {cfg['px']}px, "
                 f"not width {args.width} at {args.px}px")
    fastest = max(r["grad_passes_per_s"] for r in pgd_rows)
    per_image = cfg["attack_steps"] + 1
    return [{"variant": r["variant"], "precision": r["precision"],
             "train_grad_passes_per_s": r["total_images_per_s"] * per_image,
             "eval_over_train": fastest / (r["total_images_per_s"] * per_image)} for r in train["results"]]


if __name__ == "__main__":
    main()
