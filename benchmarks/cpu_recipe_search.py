"""The CPU tier's recipe search: which single-step or few-step recipe gives the highest adaptive worst
case for a fixed budget of training minutes on a 2-core CPU?

Every candidate is a set of overrides of the tier's twin recipe (``cifar10_resnet18w16_cpu``: width-16
ResNet-18, N-FGSM, bf16, one-cycle LR, weight averaging, label smoothing) with the number of epochs
that its measured cost fits into the same budget (``--minutes``; a PGD-2 step costs 1.5x an N-FGSM one,
width 24 about 2x width 16). Each is trained (resumable: a finished run is reused, a stopped one
resumes), its selected weights (``best/``, chosen on the held-out slice, the weight average) are
evaluated with the ``quick`` suite (our APGD-CE / APGD-T and the official APGD-CE / APGD-T) on the first
``--n`` lossless test images, and catastrophic overfitting is read from its log. Prints a Markdown
table with Wilson intervals, writes JSON, and with ``--results`` puts the table into RESULTS.md
between its markers. Judge the candidates by the adaptive worst case, never by PGD alone.

    python benchmarks/cpu_recipe_search.py --data-dir ../shared/data --results benchmarks/RESULTS.md  # ~30 min
    python benchmarks/cpu_recipe_search.py --tiny        # the CI size: digits, width 4, a few images
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from again_study import TINY, pick, run_one

# name -> (what it is, relative cost of an epoch against the base, overrides)
CANDIDATES: dict[str, tuple[str, float, list[str]]] = {
    "n_fgsm": ("N-FGSM (noise 2 eps, step eps, no projection), weight averaging, label smoothing 0.1", 1.0, []),
    "n_fgsm_plain": ("N-FGSM without weight averaging or label smoothing", 1.0,
                     ["ema=null", "method.label_smoothing=0"]),
    "fgsm_rs": ("FGSM-RS (Wong et al. 2020: uniform start in the ball, step 1.25 eps, projected), weight averaging, "
                "label smoothing 0.1", 1.0, ["method.name=fgsm_rs", "attack.step_size=10/255", "attack.noise=null"]),
    "pgd2": ("PGD-2 (random start, step eps/2 x 1.25), weight averaging, label smoothing 0.1", 1.5,
             ["method.name=pgd_at", "attack.steps=2", "attack.step_size=5/255", "attack.noise=null",
              "attack.random_start=true"]),
    "n_fgsm_w24": ("N-FGSM at width 24, weight averaging, label smoothing 0.1", 2.0, ["model.kwargs.width=24"]),
}
BEGIN, END = "<!-- cpu-search:begin -->", "<!-- cpu-search:end -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cifar10_resnet18w16_cpu")
    p.add_argument("--candidates", default="n_fgsm,n_fgsm_plain,fgsm_rs,pgd2", help=f"of {', '.join(CANDIDATES)}")
    p.add_argument("--epochs", type=int, default=5, help="epochs of a candidate of relative cost 1 (the budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="an override for every run (key.path=value)")
    p.add_argument("--n", type=int, default=300, help="test images")
    p.add_argument("--aa-iter", type=int, default=20)
    p.add_argument("--n-targets", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/cpu_search")
    p.add_argument("--json", default="benchmarks/cpu_recipe_search.json")
    p.add_argument("--results", default=None)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    args.which = "best"
    names = pick(args.candidates, CANDIDATES, "candidates")
    if args.tiny:
        args.set = TINY + args.set
    t0, runs = time.time(), []
    for name in names:
        _, cost, sets = CANDIDATES[name]
        epochs = max(1, round(args.epochs / cost))
        t = time.time()
        r = run_one(args.recipe, Path(args.out), name, args.seed, args, [*sets, f"epochs={epochs}"])
        runs.append(r)
        write(args, runs, t0)
        print(f"{name}: {epochs} epochs, clean {100 * r['clean']:.1f}, worst case {100 * r['worst_case']:.1f} "
              f"({time.time() - t:.0f} s)", flush=True)
    table = markdown(args, runs, t0)
    print(table)
    write(args, runs, t0)
    if args.results:
        from again_study import write_results

        write_results(Path(args.results), table, BEGIN, END, "The CPU tier's recipe search")


def write(args: argparse.Namespace, runs: list[dict[str, Any]], t0: float) -> None:
    from againzoo.io import atomic_write_json

    atomic_write_json(args.json, {"config": {**{k: v for k, v in vars(args).items() if k != "json"},
                                             "seconds": round(time.time() - t0, 1)},
                                  "runs": [{k: v for k, v in r.items() if k != "per_example"} for r in runs]})


def markdown(args: argparse.Namespace, runs: list[dict[str, Any]], t0: float) -> str:
    import torch

    from againzoo.stats import wilson

    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| candidate | epochs | train min | img/s | clean [95% CI] | adaptive worst case [95% CI] | "
             "catastrophic overfitting |", "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: -r["worst_case"]):
        n = r["n"]
        c, w = wilson(r["clean"], n), wilson(r["worst_case"], n)
        co = f"**at epoch {r['catastrophic_overfitting']}**" if r.get("catastrophic_overfitting") else "no"
        lines.append(f"| `{r['variant']}` | {r['epochs']} | {r['train_seconds'] / 60:.1f} | {r['images_per_s']:.0f} | "
                     f"{pct(r['clean'])} [{pct(c[0])}, {pct(c[1])}] | "
                     f"**{pct(r['worst_case'])}** [{pct(w[0])}, {pct(w[1])}] | {co} |")
    lines += ["", "Candidates: " + "; ".join(f"`{r['variant']}`: {CANDIDATES[r['variant']][0]}" for r in runs) + ".",
              "", f"Setting: recipe `{args.recipe}`, {args.epochs} epochs for a candidate of the base cost (fewer for "
              f"costlier steps), seed {args.seed}, overrides {args.set or 'none'}; the selected weights (best/) with the "
              f"quick suite ({args.aa_iter} APGD iterations, {args.n_targets} targets) on {runs[0]['data']['evaluated']}; "
              f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
              f"{sum(r['train_seconds'] for r in runs) / 60:.0f} min of training in all."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
