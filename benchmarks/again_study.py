"""The AGAIN study: which AGAIN variant, if any, beats its twin without AGAIN, with a classifier that
reads the image rather than copying its gate?

Trains every variant (``--set`` overrides of one base recipe) and the twin (the same recipe with
``model.again.enabled=false``) with the same budget and seeds, evaluates the final weights of each
with the ``quick`` suite (our APGD-CE / APGD-T on the plain, joint and straight-through objectives,
the gate-targeted attack, and the official APGD-CE / APGD-T with the hard and the straight-through
gate) on the first ``--n`` lossless test images, and reads the ``gate`` block of each eval.json
(``againzoo.gate_diagnostics``). Prints a Markdown table, writes JSON, and with ``--results`` puts
the table into ``benchmarks/RESULTS.md`` between the study's markers.

Intervals: 95% bootstrap intervals over the test images (2,000 resamples; every model is evaluated
on the same images, the seeds averaged per image), for each variant's adaptive worst case and for
its difference from the twin; and for the difference, a second interval over **seeds and images**
(``againzoo.stats.seed_bootstrap``: each replicate draws the seed pairs, then the images), with the
difference seed by seed beside it. A variant is said to beat (or to fall below) the twin only when
both intervals exclude 0.

Resumable: a finished training or evaluation is reused, an interrupted training resumes, and a run
already in ``--json``'s record of the same study is taken from it (the record, committed under
``benchmarks/records/``, carries a study across machines whose ``runs/`` is gone). The JSON record
is rewritten after every run (``complete: false`` until the last), so a command stopped at its time
limit (a GPU window) still hands back every finished run; ``--from-json`` tabulates such a
record elsewhere (the per-example results travel in it), without training anything. Stopped with
Ctrl-C or SIGTERM (``kill``), it also writes the wall time spent so far, the unfinished run's
included, so the setting paragraph's wall time sums every invocation (``kill -9`` loses the time
since the last finished run).

    python benchmarks/again_study.py --data-dir ../shared/data --results benchmarks/RESULTS.md   # 15 runs, ~8 h on 2 fp32 cores
    python benchmarks/again_study.py --tiny            # the CI size: digits, width 4, 1 epoch
    python benchmarks/again_study.py --device cuda --set model.kwargs.width=64 --set data.limit=null ...  # needs a GPU
    python benchmarks/again_study.py --from-json <files_at>/again_study.json --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "twin": ("PGD-AT without AGAIN (the same recipe, model.again.enabled=false)", ["model.again.enabled=false"]),
    "paper": ("the paper's AGAIN: one site at the last stage, label-mixed training gate (Eq. 4), alpha 0.6, HFF", []),
    "authors": ("the authors' code: sites on the last block's residual branch and the last stage, CE + 2 x mean "
                "ASE CE, no HFF, AGAIN on every batch",
                ["model.again.layer=[last_branch, last_stage]", "model.again.aux_weight=2", "model.again.hff=false",
                 "model.again.schedule.start=1", "model.again.schedule.ramp_epochs=0"]),
    "branch": ("one site on the last block's residual branch (shortcut untouched), label-mixed gate",
               ["model.again.layer=last_branch"]),
    "detach": ("the paper's, gate rows trained by the ASE term only (detached from the main loss)",
               ["model.again.detach_gate=true"]),
    "pred": ("label-free: the ASE head's own argmax gates in training too (alpha 1)",
             ["model.again.gate_source=pred", "model.again.alpha=1.0"]),
    "soft": ("label-free, CIFS-like: softmax(ASE logits) @ W gates in training and at inference (alpha 1)",
             ["model.again.gate_source=soft", "model.again.alpha=1.0"]),
    "soft_mix": ("soft, mixed 0.6 / 0.4 with a random class's row (Eq. 4's mix without labels)",
                 ["model.again.gate_source=soft", "model.again.alpha=0.6"]),
}
STUDY = ("twin", "paper", "authors", "pred", "soft_mix")  # the variants run by default (issue #30)
TINY = ["data.dataset=digits", "data.limit=null", "model.kwargs.width=4", "epochs=1", "data.val_size=100",
        "eval.n_val=40", "attack.steps=2", "eval.attack_steps=2", "log_every=1000"]
BEGIN, END = "<!-- again-study:begin -->", "<!-- again-study:end -->"


MACHINES = "study_machines.json"  # in each run's folder: the machines (and precision) its training ran on


def _read(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def pick(text: str, known: dict[str, Any], what: str) -> list[str]:
    """The names of a comma-separated ``text``, each one of ``known``, or exit with one line."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"error: unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def run_one(recipe: str, out: Path, variant: str, seed: int, args: argparse.Namespace,
            variant_set: list[str] | None = None, precisions: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Train (or reuse / resume) and evaluate one (variant, seed); return what the table needs.
    ``variant_set``: the variant's overrides (default: this study's ``VARIANTS``). ``precisions``: what
    the study's finished runs trained in; a training this machine would run in another precision
    (``precision: auto`` is bf16 only where the CPU has it) is refused, so that the runs compare."""
    from againzoo import recipes
    from againzoo.evaluation import evaluate_checkpoint
    from againzoo.io import atomic_write_json, read_jsonl
    from againzoo.runtime import resolve_device
    from againzoo.training import train
    from againzoo.training.trainer import device_setup
    from againzoo.zoo import training_record

    extra = VARIANTS[variant][1] if variant_set is None else variant_set
    overrides = [f"output_dir={out / f'{variant}_s{seed}'}", f"seed={seed}", *args.set, *extra]
    rec = recipes.load(recipe, overrides)
    run_dir = Path(rec.output_dir) / rec.name
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    stopped = any(r.get("catastrophic_overfitting") for r in rows)
    if len(rows) < rec.epochs and not stopped:
        mine = device_setup(rec, resolve_device(args.device)).precision
        if precisions and mine not in precisions:
            sys.exit(f"error: {variant} seed {seed} would train in {mine} here (precision: {rec.precision}) but the "
                     f"study's finished runs trained in {', '.join(sorted(precisions))}; set AGAINZOO_CPU_BF16="
                     f"{int('bf16' in precisions)} so that its runs compare, or start another study (--json, --out)")
        resume = run_dir if (run_dir / "recipe.yaml").exists() else None
        train(rec if resume is None else None, resume=resume, device=args.device, data_dir=args.data_dir,
              progress=not args.quiet)
        rows = read_jsonl(run_dir / "metrics.jsonl")
        facts = training_record(run_dir, rec.epochs, 0.0)  # where these epochs ran (a study spans sessions)
        atomic_write_json(run_dir / MACHINES,
                          sorted(set(_read(run_dir / MACHINES, [])) | {f"{facts['device']}, {facts['precision']}"}))
    which = getattr(args, "which", "last")  # the final weights, or best/ (selected on the held-out slice)
    weights = run_dir / "best" if which == "best" and (run_dir / "best" / "config.json").exists() else run_dir
    if (weights / "eval.json").exists():
        result = json.loads((weights / "eval.json").read_text())
    else:
        result, _ = evaluate_checkpoint(str(run_dir), "quick", args.data_dir, args.n, device=args.device, which=which,
                                        progress=not args.quiet, checks=False, aa_iter=args.aa_iter,
                                        n_targets=args.n_targets)
    last = rows[-1]
    out_row = {"variant": variant, "seed": seed, "run_dir": str(run_dir), "clean": result["clean_acc"],
               "worst_case": result["worst_case_acc"], "columns": result["columns"],
               "train_seconds": round(sum(r.get("train_time_s", 0.0) for r in rows), 1),
               "eval_seconds": result.get("runtime", {}).get("seconds"), "machines": _read(run_dir / MACHINES, []),
               "per_example": result["per_example"], "n": result["data"]["n"], "data": result["data"],
               "epochs": len(rows), "images_per_s": rows[-1].get("images_per_s"),
               "catastrophic_overfitting": next((r["epoch"] + 1 for r in rows if r.get("catastrophic_overfitting")), None),
               "final_train": {k: last.get(k) for k in ("train_adv_acc", "train_gate_agree", "train_ase_acc",
                                                        "val_gate_follows_wrong")}}
    if result.get("gate"):
        g = result["gate"]
        out_row["gate"] = {"shortcut": g["gate_shortcut"], "clean": g["clean"], "adversarial": g.get("adversarial")}
    return out_row


def summarise(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    from againzoo.stats import from_bits, paired_bootstrap, seed_bootstrap

    by = {v: [r for r in runs if r["variant"] == v] for v in variants}
    twin_seeds = {r["seed"]: from_bits(r["per_example"]["worst_case"]) for r in by.get("twin", [])}
    twin = list(twin_seeds.values()) or None
    rows = []
    for v in variants:
        rs = by[v]
        if not rs:
            continue
        mine = [from_bits(r["per_example"]["worst_case"]) for r in rs]
        pairs = [(m, twin_seeds[r["seed"]]) for m, r in zip(mine, rs) if r["seed"] in twin_seeds]  # same seed of both
        worst = paired_bootstrap(mine, None if v == "twin" else [t for _, t in pairs] or twin)  # on the shared seeds
        if v != "twin" and pairs:
            spread = seed_bootstrap(*zip(*pairs))
            worst["seed_ci"], worst["per_seed_diff"] = spread["diff_ci"], spread["per_seed"]
        clean = paired_bootstrap([from_bits(r["per_example"]["clean"]) for r in rs], None)
        gates = [r["gate"] for r in rs if r.get("gate")]
        mean = lambda key, part="clean": (float(np.mean([g[part][key] for g in gates if g.get(part)]))  # noqa: E731
                                          if any(g.get(part) for g in gates) else None)
        rows.append({"variant": v, "description": VARIANTS[v][0], "seeds": [r["seed"] for r in rs],
                     "clean": clean, "worst_case": worst,
                     "per_seed": {"clean": [r["clean"] for r in rs], "worst_case": [r["worst_case"] for r in rs]},
                     "gate": None if not gates else {
                         "shortcut_seeds": sum(g["shortcut"] for g in gates), "ase_acc": mean("ase_acc"),
                         "oracle_acc": mean("oracle_acc"), "wrong_acc": mean("wrong_acc"),
                         "follows_wrong": mean("follows_wrong"), "ase_acc_adversarial": mean("ase_acc", "adversarial"),
                         "agree": mean("agree")},
                     "train_seconds": float(np.mean([r["train_seconds"] for r in rs]))})
    ev = [r.get("eval_seconds") or 0.0 for r in runs]
    tr = [r["train_seconds"] for r in runs]
    timing = {"runs": len(runs), "train_hours": sum(tr) / 3600, "eval_hours": sum(ev) / 3600,
              "machines": sorted({m for r in runs for m in r.get("machines", [])})}
    return {"rows": rows, "verdict": verdict(rows), "time": timing}


def _called(w: dict[str, Any]) -> int:
    """+1 / -1 when the difference from the twin is beyond both intervals (images; seeds and images), else 0."""
    cis = [w["diff_ci"]] + ([w["seed_ci"]] if "seed_ci" in w else [])
    return 1 if all(lo > 0 for lo, _ in cis) else -1 if all(hi < 0 for _, hi in cis) else 0


def _ci_text(w: dict[str, Any]) -> str:
    text = f"95% CI over images {100 * w['diff_ci'][0]:+.1f} to {100 * w['diff_ci'][1]:+.1f}"
    if "seed_ci" in w:
        text += (f", over seeds and images {100 * w['seed_ci'][0]:+.1f} to {100 * w['seed_ci'][1]:+.1f}; per seed "
                 + " / ".join(f"{100 * d:+.1f}" for d in w["per_seed_diff"]))
    return text


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The zoo's choice: the AGAIN variant with the highest adaptive worst case that no seed flags
    ``gate_shortcut``; whether it beats the twin beyond both intervals (images; seeds and images)."""
    twin = next((r for r in rows if r["variant"] == "twin"), None)
    sound = [r for r in rows if r["variant"] != "twin" and r["gate"] and r["gate"]["shortcut_seeds"] == 0]
    flagged = [r["variant"] for r in rows if r["variant"] != "twin" and r["gate"] and r["gate"]["shortcut_seeds"]]
    if not sound:
        return {"choice": "twin" if twin else None, "flagged": flagged, "beats_twin": False,
                "text": "Every AGAIN variant is flagged gate_shortcut: none is a model to publish; the twin without "
                        "AGAIN is the recommendation."}
    best = max(sound, key=lambda r: r["worst_case"]["mean"])
    out = {"choice": best["variant"], "flagged": flagged}
    if twin is None:
        out["text"] = f"Best sound AGAIN variant: {best['variant']} (no twin in this study to compare with)."
        return out
    w = best["worst_case"]
    d = 100 * w["diff"]
    below = [r["variant"] for r in rows if r["variant"] != "twin" and _called(r["worst_case"]) < 0]
    out["below_twin"] = below
    if _called(w) > 0:
        out["beats_twin"] = True
        out["text"] = (f"`{best['variant']}` beats the twin by {d:+.1f} points of adaptive worst case "
                       f"({_ci_text(w)}): it is the zoo's AGAIN recipe.")
    else:
        out["beats_twin"] = False
        out["choice_for_zoo"] = best["variant"]
        out["text"] = (f"No AGAIN variant beats the twin beyond the intervals: the best sound one, `{best['variant']}`, "
                       f"differs by {d:+.1f} points ({_ci_text(w)})."
                       + (f" Below the twin beyond both intervals: {', '.join(f'`{v}`' for v in below)}." if below else "")
                       + f" The twin without AGAIN is the zoo's recommended model; `{best['variant']}` is the AGAIN "
                         f"recipe kept for the pair.")
    return out


def markdown(summary: dict[str, Any], config: dict[str, Any]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    complete = config.get("complete", True)  # a partial table says so and calls no verdict
    lines = ["| variant | clean [95% CI] | adaptive worst case [95% CI] | per seed | vs twin, points [95% CI images] "
             "[seeds and images] | vs twin per seed | ASE head | true-label gate | wrong-label gate: acc / followed | "
             "shortcut (seeds) | train min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        w, c, g = r["worst_case"], r["clean"], r["gate"] or {}
        diff = "-" if "diff" not in w else (f"{100 * w['diff']:+.1f} [{100 * w['diff_ci'][0]:+.1f}, "
                                           f"{100 * w['diff_ci'][1]:+.1f}]"
                                           + (f" [{100 * w['seed_ci'][0]:+.1f}, {100 * w['seed_ci'][1]:+.1f}]"
                                              if "seed_ci" in w else ""))
        seed_diff = " / ".join(f"{100 * d:+.1f}" for d in w.get("per_seed_diff", [])) or "-"
        shortcut = "-" if not g else f"{'**yes**' if g['shortcut_seeds'] else 'no'} ({g['shortcut_seeds']}/{len(r['seeds'])})"
        lines.append(
            f"| `{r['variant']}` | {pct(c['mean'])} [{pct(c['ci'][0])}, {pct(c['ci'][1])}] | **{pct(w['mean'])}** [{pct(w['ci'][0])}, {pct(w['ci'][1])}] | "
            f"{' / '.join(pct(v) for v in r['per_seed']['worst_case'])} | {diff} | {seed_diff} | {pct(g.get('ase_acc'))} | "
            f"{pct(g.get('oracle_acc'))} | {pct(g.get('wrong_acc'))} / {pct(g.get('follows_wrong'))} | {shortcut} | "
            f"{r['train_seconds'] / 60:.1f} |")
    lines += ["", "Variants: " + "; ".join(f"`{r['variant']}`: {r['description']}" for r in summary["rows"]) + ".",
              "", (f"**Verdict.** {summary['verdict']['text']}" if complete else
                   f"**So far ({config['runs_done']} of {config['runs_planned']} runs; no verdict until all are in).** "
                   f"{summary['verdict']['text']}"), "",
              f"Setting: recipe `{config['recipe']}` with {config['set'] or 'no extra overrides'}, seeds "
              f"{config['seeds']}, quick suite (our APGD-CE/APGD-T {config['aa_iter']} iterations, {config['n_targets']} "
              f"targets, plain/joint/straight-through objectives, gate-targeted attack, official APGD-CE/APGD-T with the "
              f"hard and the straight-through gate) on {config['n']} test images ({config['data']}), final weights; "
              f"gate figures on the clean images; {config['device']}, torch {config['torch']}, {config['date']}. "
              + _time_text(summary.get("time"))
              + (f"The study's wall time, its invocations summed: {config['wall_seconds'] / 3600:.1f} h. "
                 if config.get("wall_seconds") else "")
              + (f"{config['note']} " if config.get("note") else "")
              + ("" if complete else
                 f"Partial: {config['runs_done']} of {config['runs_planned']} runs finished so far; the same command "
                 f"continues the study. ")
              + f"Reproduce: `{config['command']}`."]
    return "\n".join(lines)


def _time_text(t: dict[str, Any] | None) -> str:
    if not t:
        return ""
    return (f"Time of its {t['runs']} runs: {t['train_hours']:.1f} h of training epochs and {t['eval_hours']:.1f} h "
            f"of evaluation, on {'; '.join(t['machines']) or 'an unrecorded machine'}. ")


def write_results(path: Path, table: str, begin: str = BEGIN, end: str = END, heading: str = "The AGAIN study") -> None:
    """Put ``table`` between the markers ``begin`` / ``end`` of a Markdown file (a new section if absent)."""
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cifar10_resnet18w16_again_study_cpu", help="the base recipe (AGAIN, paper form)")
    p.add_argument("--variants", default=",".join(STUDY), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", default=[], help="an override for every run (key.path=value)")
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--aa-iter", type=int, default=20, help="APGD iterations (ours and the official)")
    p.add_argument("--n-targets", type=int, default=3, help="APGD-T target classes (ours and the official)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/again_study", help="where the runs go")
    p.add_argument("--json", default="benchmarks/records/again_study.json",
                   help="the study's record (tracked: commit it as runs finish)")
    p.add_argument("--results", default=None, help="put the table into this Markdown file (benchmarks/RESULTS.md)")
    p.add_argument("--from-json", metavar="JSON", help="tabulate this study record (e.g. a GPU window's) instead of "
                   "running anything")
    p.add_argument("--tiny", action="store_true", help="the CI size: digits, width 4, one epoch, a few images")
    p.add_argument("--note", default="", help="a sentence for the table's setting paragraph (how it was run)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        config, runs = record["config"], record["runs"]
        if args.note:
            config["note"] = args.note
        variants = config.get("variants") or list(dict.fromkeys(r["variant"] for r in runs))
        finish(args, config, runs, variants)
        return
    variants = pick(args.variants, VARIANTS, "variants")
    if args.tiny:
        args.set = TINY + args.set
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    runs: list[dict[str, Any]] = []
    record = _read(Path(args.json), {})  # an earlier invocation of this study (stopped, resumed elsewhere)
    before = record.get("config", {})
    same = all(before.get(k) == v for k, v in (("recipe", args.recipe), ("set", args.set), ("variants", variants),
                                                ("seeds", seeds), ("aa_iter", args.aa_iter),
                                                ("n_targets", args.n_targets))) and before.get("n") in (0, args.n)
    done = {(r["variant"], r["seed"]): r for r in record.get("runs", [])} if same else {}
    t0 = time.time() - (before.get("wall_seconds", 0.0) if same else 0.0)
    save = lambda: write_record(Path(args.json), study_config(args, variants, seeds, runs, t0),  # noqa: E731
                                summarise(runs, variants), runs)
    signal.signal(signal.SIGTERM, _interrupt)  # a session's end: stop like Ctrl-C
    try:
        for seed in seeds:
            for v in variants:
                t = time.time()
                r = done.get((v, seed))  # the record outlives the runs
                if r is None:  # MACHINES entries end in the precision the run trained in
                    trained = frozenset(m.rsplit(", ", 1)[-1] for d in [*done.values(), *runs]
                                        for m in d.get("machines", []))
                    r = run_one(args.recipe, out, v, seed, args, precisions=trained)
                runs.append(r)
                save()
                g = r.get("gate")  # printed once the record holds the run
                print(f"{v} seed {seed}: clean {100 * r['clean']:.1f}, worst case {100 * r['worst_case']:.1f}"
                      + (f", follows a wrong gate {100 * g['clean']['follows_wrong']:.1f}%" if g else "")
                      + f" ({time.time() - t:.0f} s)", flush=True)
    except KeyboardInterrupt:  # the time of the unfinished run counts in the wall time; its epochs resume
        save()
        sys.exit(f"stopped: {len(runs)} of {len(variants) * len(seeds)} runs in {args.json}; "
                 "the same command continues")
    finish(args, study_config(args, variants, seeds, runs, t0), runs, variants)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def study_config(args: argparse.Namespace, variants: list[str], seeds: list[int], runs: list[dict[str, Any]],
                 t0: float) -> dict[str, Any]:
    """How the study was run (the table's setting paragraph), with how many of its runs are done."""
    import torch

    from againzoo import __version__

    return {"recipe": args.recipe, "set": args.set, "variants": variants, "seeds": seeds,
            "n": runs[0]["n"] if runs else 0, "aa_iter": args.aa_iter, "n_targets": args.n_targets,
            "device": args.device or "auto", "data": runs[0]["data"].get("evaluated", "") if runs else "",
            "torch": torch.__version__, "againzoo": __version__, "date": time.strftime("%Y-%m-%d"),
            "wall_seconds": round(time.time() - t0, 1), "note": args.note,
            "runs_done": len(runs), "runs_planned": len(variants) * len(seeds),
            "complete": len(runs) == len(variants) * len(seeds),
            "command": " ".join(["python benchmarks/again_study.py"]
                                + [a for a in sys.argv[1:] if a != args.note and a != "--note"])}


def write_record(path: Path, config: dict[str, Any], summary: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The study's JSON (config, summary, every run with its per-example results), in one piece."""
    from againzoo.io import atomic_write_json

    atomic_write_json(path, {"config": config, **summary, "runs": runs})


def finish(args: argparse.Namespace, config: dict[str, Any], runs: list[dict[str, Any]], variants: list[str]) -> None:
    """Print the table, write the record, and put the table into ``--results``."""
    summary = summarise(runs, variants)
    table = markdown(summary, config)
    print(table)
    write_record(Path(args.json), config, summary, runs)
    if args.results:
        write_results(Path(args.results), table)


if __name__ == "__main__":
    main()
