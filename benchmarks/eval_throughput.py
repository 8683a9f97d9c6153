"""Evaluation throughput: images/s of PGD-20 alone, of the ``quick`` suite (our APGD-CE/APGD-T in
every mode + the gate attack), of the official AutoAttack (``aa`` suite: pyautoattack's standard
AA with the hard and the straight-through gate) and of the ``paper`` suite, with the ratio of the
official AA's time to our quick suite's.

Runs the real evaluator (``againzoo.evaluation.evaluate``) on random images with a freshly built
model (throughput does not depend on the weights much, only on how many examples stay robust, so
the numbers are a lower bound for robust models: every example survives every attack). Prints a
table and writes JSON.

    python benchmarks/eval_throughput.py                                  # tiny, CPU (what CI runs)
    python benchmarks/eval_throughput.py --device cuda --width 64 --px 32 --n 1000 --full-budget
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import againzoo
from againzoo.evaluation import AttackSpec, evaluate, run_attack


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
    p.add_argument("--json", default="benchmarks/eval_throughput.json")
    args = p.parse_args()
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
    sync()
    t = time.perf_counter()
    for i in range(0, args.n, args.batch):
        run_attack(spec, model, x[i:i + args.batch], y[i:i + args.batch], 8 / 255, "Linf", gen)
    sync()
    rows.append({"what": "PGD-20 (joint loss)", "seconds": time.perf_counter() - t})
    for suite in ("quick", "aa", "paper"):
        sync()
        t = time.perf_counter()
        evaluate(model, x, y, suite, 8 / 255, batch_size=args.batch, progress=False, checks=False, **budget)
        sync()
        rows.append({"what": f"{suite} suite", "seconds": time.perf_counter() - t})
    for r in rows:
        r["images_per_s"] = args.n / r["seconds"]
    secs = {r["what"]: r["seconds"] for r in rows}
    ratio = secs["aa suite"] / secs["quick suite"]
    print(f"evaluation throughput, {args.arch} width {args.width}, {args.px}px, n={args.n}, {dev} "
          f"({'standard' if args.full_budget else 'reduced'} budgets)")
    print(f"{'what':<22}{'seconds':>10}{'img/s':>10}")
    for r in rows:
        print(f"{r['what']:<22}{r['seconds']:>10.2f}{r['images_per_s']:>10.1f}")
    print(f"official AutoAttack (hard + straight-through gate) / our quick suite: {ratio:.2f}x the time")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"config": vars(args), "results": rows, "aa_over_quick": ratio,
                                           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
