"""Add the gate diagnostics to a published model's eval.json that predates them, without touching
the rest of the record (the evaluation of exactly those weights stays what it was).

The clean figures are measured on the record's own images (the first n lossless test images); the
adversarial figures come from a ``quick``-suite evaluation of the same file on the first
``--n-adversarial`` images (its per-example worst case), with the budget given. The block says how
it was made (``measured``).

    python scripts/attach_gate.py zoo/again_resnet18 --data-dir ../shared/data --n-adversarial 200 --aa-budget 10,3,5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from againzoo.checkpoint import load_local
from againzoo.evaluation import eval_data, evaluate
from againzoo.gate_diagnostics import gate_diagnostics
from againzoo.io import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n-adversarial", type=int, default=200)
    p.add_argument("--aa-budget", default="10,3,5", help="N_ITER,N_TARGETS,N_QUERIES of the quick suite")
    args = p.parse_args()
    wdir = Path(args.checkpoint)
    record = json.loads((wdir / "eval.json").read_text())
    config = json.loads((wdir / "config.json").read_text())
    model = load_local(wdir).eval()
    x, y, _ = eval_data(config, args.data_dir, record["data"].get("split"), int(record["data"]["n"]))
    t0 = time.time()
    it, targets, queries = (int(v) for v in args.aa_budget.split(","))
    quick = evaluate(model, x[:args.n_adversarial], y[:args.n_adversarial], "quick", record["eps"], checks=False,
                     progress=False, aa_budget={"n_iter": it, "n_targets": targets, "n_queries": queries})
    block = gate_diagnostics(model, x, y)
    block["adversarial"] = quick["gate"].get("adversarial")
    block["adversarial_examples"] = quick["gate"]["adversarial_examples"]
    block["measured"] = {"when": time.strftime("%Y-%m-%d"), "how": "scripts/attach_gate.py", "device": "cpu",
                         "torch": torch.__version__, "seconds": round(time.time() - t0, 1),
                         "clean_images": len(y), "quick_suite_budget": {"n_iter": it, "n_targets": targets},
                         "quick_suite_worst_case_acc": quick["worst_case_acc"],
                         "note": "added after the evaluation above; the rest of this record is unchanged"}
    record["gate"] = block
    flags = [f for f in record.get("flags", []) if f["check"] != "gate_shortcut"]
    from againzoo.gate_diagnostics import describe

    flags.append({"check": "gate_shortcut", "passed": not block["gate_shortcut"], "detail": describe(block)})
    record["flags"] = flags
    atomic_write_json(wdir / "eval.json", record)
    print(describe(block))


if __name__ == "__main__":
    main()
