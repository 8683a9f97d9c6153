"""Bind a published model's records to its weights when they predate the content hashes: check first,
then add ``weights_sha256`` to ``config.json``, ``eval.json`` and ``robustbench.json``.

The records are not assumed to describe the file: the script recomputes the clean accuracy of the
weights on the record's own images (the first n lossless test images) and requires it to equal the
record's exactly (and the per-example clean results, where the record has them), and requires the
registry's sha256 (written when the file was evaluated) to be the file's. Only then does it add the
hash; nothing else in the records changes.

    python scripts/attach_hash.py zoo/again_resnet18 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from againzoo.checkpoint import load_local
from againzoo.evaluation import eval_data
from againzoo.integrity import WEIGHTS_KEY, sha256_of
from againzoo.io import atomic_write_json
from againzoo.registry import entries
from againzoo.stats import to_bits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    wdir = Path(args.checkpoint)
    digest = sha256_of(wdir / "model.safetensors")
    registered = [e for e in entries() if e.local and Path(e.local).parent.name == wdir.resolve().name]
    if not registered or any(e.sha256 != digest for e in registered):
        sys.exit(f"error: the registry does not record {wdir / 'model.safetensors'} with sha256 {digest}")
    record = json.loads((wdir / "eval.json").read_text())
    config = json.loads((wdir / "config.json").read_text())
    model = load_local(wdir).eval()
    x, y, _ = eval_data(config, args.data_dir, record["data"].get("split"), int(record["data"]["n"]))
    with torch.no_grad():
        correct = torch.cat([model(x[i:i + 250]).argmax(1) == y[i:i + 250] for i in range(0, len(y), 250)])
    n_correct, n = int(correct.sum()), len(y)
    if n_correct != round(record["clean_acc"] * n):
        sys.exit(f"error: these weights get {n_correct}/{n} clean, the record says {record['clean_acc']}: not its file")
    bits = (record.get("per_example") or {}).get("clean")
    if bits is not None and bits != to_bits(correct):
        sys.exit("error: the per-example clean results differ from the record's: not its file")
    for name, obj in (("config.json", config), ("eval.json", record)):
        atomic_write_json(wdir / name, {**obj, WEIGHTS_KEY: digest})
    if (wdir / "robustbench.json").exists():
        rb = json.loads((wdir / "robustbench.json").read_text())
        atomic_write_json(wdir / "robustbench.json", {**rb, WEIGHTS_KEY: digest})
    print(f"{wdir}: clean {n_correct}/{n} equals the record's; weights_sha256 {digest} added to its records")


if __name__ == "__main__":
    main()
