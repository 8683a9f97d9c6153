"""Robustness of a deployed ONNX file, measured on the file itself.

An ONNX file has no gradients, so white-box attacks cannot run on it. What can:

(a) **Transfer from the source checkpoint.** Every attack of an evaluation suite (``quick`` by
    default: our APGD-CE / APGD-T on every objective the model exposes, the gate-targeted attack,
    the official APGD-CE / APGD-T with the hard and the straight-through gate) is crafted in PyTorch
    on the checkpoint the file was exported from (named by its sha256 in the file's metadata), and
    the adversarial images are fed to the file. For an fp32 export the file computes what the
    source computes, so this is the white-box number; for int8 / fp16 it measures how much the
    precision change moves the decision on the source's worst examples.
(b) **A black-box attack on the file.** The official AutoAttack's Square attack (Andriushchenko et
    al. 2020; score-based, 5,000 queries by default) runs against onnxruntime directly, on the images
    the file still classifies correctly after (a).

The record (``onnx_eval.json`` beside the file by default) has clean accuracy of the file, each
transfer attack's and Square's accuracy, the per-example worst case with its Wilson interval, the
per-example bits, and the source model's own record beside it (its ``eval.json`` when the weights
match). A robust accuracy that only a transfer attack measured is an upper bound of the white-box
one; the record says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .eval_state import EvalState, fingerprint
from .integrity import WEIGHTS_KEY, sha256_of
from .version import __version__

DEFAULT_QUERIES = 5000


class OnnxModel(nn.Module):
    """An onnxruntime session as a (gradient-free) torch module: float images in [0, 1] -> logits."""

    def __init__(self, path: str | Path, batch: int = 500):
        super().__init__()
        from .onnx_precision import session

        self.path, self.batch = Path(path), batch
        self.session = session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().float().numpy()
        out = [self.session.run(None, {self.input_name: arr[i:i + self.batch]})[0] for i in range(0, len(arr), self.batch)]
        return torch.from_numpy(np.concatenate(out)).to(x.device) if out else torch.zeros(0, 10)


def _source(files: list[OnnxModel], source: str | None) -> tuple[nn.Module, Path, str]:
    """The checkpoint the files were exported from: ``source``, checked against each file's recorded
    sha256; returns the model, its weights' folder and their sha256."""
    from .checkpoint import WEIGHTS
    from .pretrained import from_pretrained

    if source is None:
        raise ConfigError(f"evaluating {files[0].path} needs the checkpoint it was exported from (--checkpoint DIR): "
                          f"the transfer attacks are crafted on it")
    path = Path(source)
    if path.is_dir() and (path / "best" / "config.json").exists():
        path = path / "best"
    model, wdir = from_pretrained(str(path), return_dir=True)
    actual = sha256_of(wdir / WEIGHTS)
    for onnx in files:
        recorded = onnx.metadata.get(WEIGHTS_KEY)
        if recorded is not None and recorded != actual:
            raise CheckpointError(f"{onnx.path} was exported from weights with sha256 {recorded[:16]}..., but {wdir} "
                                  f"holds {actual[:16]}...: give the checkpoint it was exported from")
    return model.eval(), wdir, actual


def evaluate_onnx(path: str | Path, source: str | None, suite: str = "quick", data_dir: str | None = None,
                  n_examples: int = 1000, queries: int = DEFAULT_QUERIES, batch_size: int = 250, seed: int = 0,
                  aa_iter: int = 100, n_targets: int = 9, aa_budget: dict[str, int] | None = None,
                  output: str | Path | None = None, progress: bool = True,
                  state_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the ONNX file ``path`` (see the module docstring); writes and returns the record
    (:func:`evaluate_onnx_files` for one file)."""
    return evaluate_onnx_files([path], source, suite, data_dir, n_examples, queries, batch_size, seed, aa_iter,
                               n_targets, aa_budget, None if output is None else [output], progress, state_dir)[0]


def evaluate_onnx_files(paths: list[str | Path], source: str | None, suite: str = "quick",
                        data_dir: str | None = None, n_examples: int = 1000, queries: int = DEFAULT_QUERIES,
                        batch_size: int = 250, seed: int = 0, aa_iter: int = 100, n_targets: int = 9,
                        aa_budget: dict[str, int] | None = None, outputs: list[str | Path] | None = None,
                        progress: bool = True, state_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Evaluate ONNX files exported from one checkpoint (see the module docstring): each transfer
    attack is crafted once and applied to every file; writes and returns one record per file
    (``outputs``, default ``<file>.eval.json``).
    ``aa_budget`` reduces the official attacks' budgets and, as in :func:`againzoo.evaluation.evaluate`,
    the suite's own APGD runs share it (tests only; the record says so).
    ``state_dir`` (:mod:`againzoo.eval_state`): keep each transfer attack's per-example results on each
    file (named by the file's sha256) and each file's Square result there, one bit per image; called
    again after an interruption, in another session or with more files, the evaluation continues where
    it stopped and crafts an attack again only for a file it has no result of."""
    from tqdm.auto import tqdm

    from . import autoattack as AA
    from .evaluation import SUITES, check_budget, eval_data, run_attack, suite_specs
    from .io import atomic_write_json
    from .stats import to_bits

    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    if n_examples < 1 or queries < 1:
        raise ConfigError(f"n_examples and queries must be >= 1, got {n_examples} and {queries}")
    if not paths:
        raise ConfigError("no ONNX file to evaluate")
    if outputs is not None and len(outputs) != len(paths):
        raise ConfigError(f"{len(paths)} ONNX files but {len(outputs)} outputs")
    for path in paths:
        if not Path(path).is_file():
            raise CheckpointError(f"ONNX file not found: {path}")
    t0 = time.time()
    files = [OnnxModel(path) for path in paths]
    model, wdir, digest = _source(files, source)
    shas = [sha256_of(path) for path in paths]
    tags = [f"file-{sha[:16]}" for sha in shas]
    config = json.loads((wdir / "config.json").read_text())
    eps = float(((config.get("recipe") or {}).get("attack") or {}).get("eps", 8 / 255))
    check_budget(eps, "Linf")
    x, y, data = eval_data(config, data_dir, None, n_examples)
    with torch.no_grad():
        correct = [f(x).argmax(1) == y for f in files]
    worst = [c.clone() for c in correct]
    columns: list[dict[str, float]] = [{"Clean": float(c.float().mean())} for c in correct]
    bits: list[dict[str, str]] = [{"clean": to_bits(c)} for c in correct]
    if aa_budget is not None:  # one budget for the official APGD runs and ours
        aa_iter, n_targets = aa_budget.get("n_iter", aa_iter), aa_budget.get("n_targets", n_targets)
    specs = suite_specs(suite, model, aa_iter=aa_iter, n_targets=n_targets)
    settings = {"unit": "onnx transfer, per-file bits", "suite": suite, "eps": eps, "seed": seed, "aa_iter": aa_iter,
                "n_targets": n_targets, "aa_budget": aa_budget, "batch_size": batch_size, "version": __version__}
    state = EvalState(state_dir, fingerprint(model, x, y, settings))  # one state for this source and these images

    def craft(k: int, spec: Any, i: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        xs, ys = x[i:i + batch_size], y[i:i + batch_size]
        if spec.kind == "autoattack":
            gate = "straight_through" if spec.mode == "st" else "hard"
            x_adv = AA.run_autoattack(model, xs, ys, eps, gate=gate, batch_size=batch_size, seed=seed,
                                      budget=aa_budget, attacks=spec.aa_attacks).x_adv
        else:  # each attack and slice its own generator: a resumed evaluation draws what an uninterrupted one does
            gen = torch.Generator().manual_seed(seed + 1000 * k + i // batch_size)
            x_adv = run_attack(spec, model, xs, ys, eps, "Linf", gen)
        with torch.no_grad():  # each file's decision on the adversarial images; the images are not kept
            return {tag: f(x_adv).argmax(1) == ys for tag, f in zip(tags, files)}, {"attack": spec.name}

    # a unit per attack and slice of ``batch_size`` images: a session that stops keeps every finished slice
    starts = range(0, len(y), batch_size)
    bar = tqdm(total=len(specs) * len(starts), desc="transfer", disable=None if progress else True, leave=False)
    for k, spec in enumerate(specs):
        parts = []
        for i in starts:
            parts.append(state.unit(f"{k:02d}-{spec.name}-{i // batch_size:03d}",
                                    lambda k=k, spec=spec, i=i: craft(k, spec, i),
                                    reuse=lambda t: all(tag in t for tag in tags))[0])
            bar.update(1)
        for j, tag in enumerate(tags):
            ok = torch.cat([part[tag] for part in parts]) & correct[j]
            columns[j][f"transfer {spec.name}"] = float(ok.float().mean())
            bits[j][f"transfer {spec.name}"] = to_bits(ok)
            worst[j] &= ok
    bar.close()
    for j, (f, sha) in enumerate(zip(files, shas)):
        def run_square(j: int = j, f: OnnxModel = f, i: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            square = worst[j][i:i + batch_size].clone()
            idx = torch.nonzero(square).flatten()
            if len(idx):
                square[idx] = AA.square_correct(f, x[i + idx], y[i + idx], eps, "Linf", queries, seed, batch_size)
            return {"square": square}, {"file_sha256": sha}

        # the file, the query budget and the slice name Square's unit; the state's fingerprint the rest
        square = torch.cat([state.unit(f"square-{queries}-{sha[:16]}-{i // batch_size:03d}",
                                       lambda j=j, f=f, i=i: run_square(j, f, i))[0]["square"] for i in starts])
        columns[j][f"Square-{queries} (on the file)"] = float(square.float().mean())
        bits[j]["square"] = to_bits(square)
        worst[j] &= square
    seconds = round(time.time() - t0, 1)  # of the files' evaluation together: the crafting is shared
    records = [_record(f, path, sha, wdir, digest, suite, eps, data, columns[i], worst[i], bits[i], queries,
                       aa_budget, seconds, state.cost(seconds))
               for i, (f, path, sha) in enumerate(zip(files, paths, shas))]
    for i, record in enumerate(records):
        target = Path(outputs[i]) if outputs is not None else Path(paths[i]).with_suffix(".eval.json")
        atomic_write_json(target, record)
        record["written"] = str(target)
    return records


def _record(onnx: OnnxModel, path: str | Path, file_sha: str, wdir: Path, digest: str, suite: str, eps: float,
            data: dict[str, Any], columns: dict[str, float], worst: torch.Tensor, bits: dict[str, str], queries: int,
            aa_budget: dict[str, int] | None, seconds: float, cost: dict[str, Any]) -> dict[str, Any]:
    """One file's record, with its source's own record beside it when the weights match; ``cost``
    (:meth:`EvalState.cost`) says how much of the evaluation earlier calls did."""
    from .stats import to_bits, wilson

    n = len(worst)
    lo, hi = wilson(float(worst.float().mean()), n)
    record = {
        "file": str(path), "file_sha256": file_sha, "precision": onnx.metadata.get("precision", "fp32"),
        "source": str(wdir), WEIGHTS_KEY: digest, "suite": suite, "eps": eps,
        "norm": "Linf", "data": data, "clean_acc": columns["Clean"], "columns": columns,
        "worst_case_acc": float(worst.float().mean()), "worst_case_ci95": [lo, hi],
        "per_example": {**bits, "worst_case": to_bits(worst)},
        "square_queries": queries, "budget": aa_budget or "standard", "seconds": seconds, "cost": cost,
        "date": time.strftime("%Y-%m-%d"),
        "meaning": "transfer attacks are crafted on the source checkpoint in PyTorch and applied to the file; Square "
                   "queries the file itself; the worst case is per example over all of them (an upper bound of a "
                   "white-box worst case on the file)",
    }
    source_record = wdir / "eval.json"
    if source_record.exists():
        ev = json.loads(source_record.read_text())
        if ev.get(WEIGHTS_KEY) in (None, record[WEIGHTS_KEY]):
            record["source_record"] = {"suite": ev.get("suite"), "clean_acc": ev.get("clean_acc"),
                                       "worst_case_acc": ev.get("worst_case_acc"), "n": (ev.get("data") or {}).get("n")}
    return record
