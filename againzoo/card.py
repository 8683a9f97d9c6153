"""Model cards generated from run directories, so they cannot drift from the measurements.

* :func:`model_card`: the Hub ``README.md`` of one checkpoint, YAML metadata (license,
  library_name, tags, datasets, ``model-index`` built from ``eval.json``) + a readable card.
* :func:`zoo_card`: the top-level ``MODEL_CARD.md`` over several run directories.

Every accuracy in a card is formatted by :func:`pct` from a number read out of an ``eval.json``;
nothing is typed by hand. Other quantities are written as integers or fractions.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .errors import CheckpointError
from .gate_diagnostics import describe as describe_gate
from .integrity import WEIGHTS_KEY, check_record, sha256_of
from .io import read_jsonl
from .stats import from_bits, newcombe, paired_bootstrap, wilson

CARD_TITLE = "# againzoo model card"
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "scikit-learn digits (16x16)"}
METHOD_NAMES = {"pgd_at": "PGD-AT", "trades": "TRADES", "mart": "MART", "fgsm_rs": "FGSM-RS", "standard": "standard training"}


def pct(v: float) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals: the one format cards use."""
    return f"{100 * v:.2f}"


def eps_str(eps: float) -> str:
    f = Fraction(eps).limit_denominator(1000)
    return f"{f.numerator}/{f.denominator}" if abs(float(f) - eps) < 1e-9 else f"{eps:g}"


def load_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Config, eval.json, recipe and training log of a run dir (its best/ checkpoint) or checkpoint dir."""
    path = Path(path)
    run = path
    wdir = path / "best" if (path / "best" / "config.json").exists() else path
    if not (wdir / "config.json").exists():
        raise CheckpointError(f"{path} is not a run or checkpoint directory (no config.json)")
    if not (wdir / "eval.json").exists():
        raise CheckpointError(f"{wdir} has no eval.json: run `againzoo eval {path}` first")
    config = json.loads((wdir / "config.json").read_text())
    if wdir.name == "best" and not (run / "metrics.jsonl").exists():
        run = wdir
    ev = json.loads((wdir / "eval.json").read_text())
    check_record(ev, wdir / "model.safetensors", wdir / "eval.json")  # never a card of other weights' numbers
    return {"dir": wdir, "config": config, "eval": ev, "recipe": config.get("recipe") or {},
            "metrics": read_jsonl(run / "metrics.jsonl"), "weights_sha256": ev.get(WEIGHTS_KEY)}


def _method(recipe: dict[str, Any], config: dict[str, Any]) -> str:
    m = recipe.get("method") or {}
    name = METHOD_NAMES.get(m.get("name", ""), m.get("name", "?"))
    if m.get("awp"):
        name = f"{name} + AWP"
    return f"AGAIN-{name}" if config.get("again") else name


def _dataset(info: dict[str, Any]) -> str:
    return (info["recipe"].get("data") or {}).get("dataset") or info["eval"]["data"].get("name", "unknown")


def _data_line(ev: dict[str, Any]) -> str:
    d = ev["data"]
    kind = "lossless" if d.get("lossless") else "JPEG-75 (lossy)"
    return f"{d.get('n')} {kind} images of {d.get('name')}/{d.get('split')}"


def _metrics_rows(ev: dict[str, Any]) -> list[tuple[str, float]]:
    e = eps_str(ev["eps"])
    rows = [(f"Robust accuracy, adaptive worst case ({ev['suite']} suite, {ev['norm']} eps={e})", ev["worst_case_acc"]),
            ("Clean accuracy", ev["clean_acc"])]
    rows += [(f"{col} ({ev['norm']} eps={e})", v) for col, v in ev["columns"].items() if col != "Clean"]
    if "non_adaptive_acc" in ev:
        rows.append(("Non-adaptive attacks only (main logits; overstates robustness)", ev["non_adaptive_acc"]))
    return rows


def _training(info: dict[str, Any]) -> str:
    rows = info["metrics"]
    r = info["recipe"]
    if not rows:
        return "training log not available"
    seconds = sum(row.get("train_time_s", 0) for row in rows)
    images = sum(row.get("images_per_s", 0) * row.get("train_time_s", 0) for row in rows)
    on = info["config"].get("trained_on")
    where = (f", on {on['world_size']} x {on['device']} ({on['precision']}, torch {on['torch']}"
             f"{', torch.compile ' + str(on['compile']) if on.get('compile') else ''})" if on else "")
    return (f"{len(rows)} epochs of {r.get('epochs', '?')}, {int(round(seconds))} s of training steps "
            f"(monitoring excluded, {int(round(images / max(seconds, 1e-9)))} img/s), batch {r.get('batch_size', '?')}"
            + where)


def _autoattack_line(ev: dict[str, Any]) -> str | None:
    """The official AutoAttack runs of an eval.json, one per gate."""
    aa = ev.get("autoattack")
    if not isinstance(aa, dict):
        return None
    runs = ", ".join(f"{gate.replace('_', '-')} gate {pct(r['acc'])}" for gate, r in aa["runs"].items())
    what = "standard" if aa.get("complete", True) else "standard settings, only"
    return (f"Official AutoAttack (pyautoattack {aa['version']}, {what}: {', '.join(aa['attacks'])}): {runs}"
            + ("; the AA column is their per-example worst case" if len(aa["runs"]) > 1 else ""))


def model_index(info: dict[str, Any]) -> list[dict[str, Any]]:
    ev = info["eval"]
    ds = _dataset(info)
    return [{"name": info["recipe"].get("name") or info["config"].get("architecture"),
             "results": [{"task": {"type": "image-classification", "name": "Image Classification"},
                          "dataset": {"type": ds, "name": f"{DATASET_NAMES.get(ds, ds)} ({_data_line(ev)})",
                                      "split": ev["data"].get("split")},
                          "metrics": [{"type": "accuracy", "name": name, "value": float(pct(v)),
                                       "args": {"eps": float(ev["eps"]), "norm": ev["norm"]}}
                                      for name, v in _metrics_rows(ev)]}]}]


def _limitations(info: dict[str, Any]) -> list[str]:
    out = []
    ev = info["eval"]
    if info["config"].get("again"):
        out.append("The ASE gate is an argmax over the auxiliary head: attacks on the final logits alone see masked "
                   "gradients and overstate robustness. Quote the adaptive worst case, not a single-attack number.")
    failed = [f for f in ev.get("flags", []) if not f["passed"]]
    for f in failed:
        out.append(f"Soundness check `{f['check']}` failed: {f['detail']}")
    if not ev["data"].get("lossless", True):
        out.append("Evaluated on the JPEG-75 copy of the test set: not comparable with published CIFAR numbers.")
    trained_on = info["config"].get("training_data") or {}
    if trained_on.get("lossless") is False:
        out.append(f"Trained on lossy data ({trained_on.get('compression', 'JPEG')}, {trained_on.get('source')}): "
                   "the model learned the compressed distribution.")
    aa = ev.get("autoattack")
    if isinstance(aa, str):  # records from before the official AutoAttack: their own note
        out.append(aa + ".")
    elif aa and aa.get("budget") != "standard":
        out.append(f"AutoAttack ran with a reduced budget {aa['budget']}: not comparable with leaderboard numbers.")
    if _dataset(info) == "digits":
        out.append("A demonstration model on 16x16 digits, not a CIFAR model.")
    out += (info["config"].get("published") or {}).get("notes", [])
    return out


def _gate_lines(ev: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The gate diagnostics of a gated model, in words (:mod:`againzoo.gate_diagnostics`)."""
    if not config.get("again"):
        return []
    g = ev.get("gate")
    if not g:
        return ["Gate diagnostics: not measured (this record predates them; `againzoo eval` of the weights writes them)."]
    c = g["clean"]
    lines = [f"Gate diagnostics ({c['n']} clean images): {describe_gate(g)} The prediction agrees with the class "
             f"whose row gated it on {pct(c['agree'])}% of images; with a random class's gate it is "
             f"{pct(c['random_acc'])}% accurate."]
    if g.get("adversarial"):
        a = g["adversarial"]
        lines.append(f"On the suite's worst-case adversarial examples ({a['n']}): ASE head {pct(a['ase_acc'])}%, "
                     f"true-label gate {pct(a['oracle_acc'])}%, wrong-label gate followed on {pct(a['follows_wrong'])}%.")
    if g["gate_shortcut"]:
        lines.append("What this means: the final classifier copies its gate instead of reading the image; the "
                     "model is, in effect, the ASE head (a linear probe on the last features) behind an argmax that "
                     "hides gradients. Prefer the twin without AGAIN.")
    return lines


def _gate_cell(ev: dict[str, Any], config: dict[str, Any]) -> str:
    if not config.get("again"):
        return "no gate"
    g = ev.get("gate")
    if not g:
        return "not measured"
    return f"{'**SHORTCUT**' if g['gate_shortcut'] else 'reads the image'} (follows a wrong gate on {pct(g['clean']['follows_wrong'])}%)"


def _aa_cell(ev: dict[str, Any]) -> str:
    """The official AutoAttack accuracy (the per-example worst case over its gates, then each gate's
    run); a record from before the official AutoAttack says its AA column was our own; else a dash."""
    aa = ev.get("autoattack")
    if "AA" not in ev["columns"]:
        return "-"
    text = pct(ev["columns"]["AA"])
    if not isinstance(aa, dict):
        return f"{text} (ours, not the official AA)"
    runs = aa.get("runs") or {}
    if len(runs) > 1:
        text += " (" + " / ".join(f"{g.replace('straight_through', 'straight-through')} {pct(r['acc'])}"
                                  for g, r in runs.items()) + ")"
    return text


_NOT_THE_RECIPE = ("name", "description", "output_dir")  # what a twin's recipe may name differently


def _recipe_but_again(recipe: dict[str, Any]) -> str:
    """A recipe with AGAIN's settings, its name, description and output folder left out, as a key."""
    rest = {k: v for k, v in recipe.items() if k not in _NOT_THE_RECIPE}
    rest["model"] = {k: v for k, v in (rest.get("model") or {}).items() if k != "again"}
    return json.dumps(rest, sort_keys=True, default=str)


def twin_pairs(infos: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(AGAIN checkpoint, its twin) index pairs: the twin has no AGAIN and the same recipe otherwise
    (backbone width, data, method, schedule, epochs: everything but AGAIN's settings and the recipe's
    name), the same backbone, and was evaluated with the same suite, norm and eps on the same images.
    A model of another width or schedule is not a twin, whatever its backbone is called."""
    def key(i: dict[str, Any]) -> tuple[Any, ...]:
        ev, cfg = i["eval"], i["config"]
        d = ev["data"]
        return (cfg.get("backbone", cfg.get("architecture")), _dataset(i), _recipe_but_again(i["recipe"]),
                ev["suite"], ev["norm"], ev["eps"], d.get("name"), d.get("split"), d.get("n"), d.get("evaluated"))
    pairs = []
    for a, info in enumerate(infos):
        if info["config"].get("again"):
            twin = next((t for t, other in enumerate(infos)
                         if not other["config"].get("again") and key(other) == key(info)), None)
            if twin is not None:
                pairs.append((a, twin))
    return pairs


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` minus ``b`` (two eval.json records on the same images) for the worst case and clean
    accuracy, with 95% intervals: paired bootstrap over the images when both have per-example
    results, else Newcombe's interval for independent samples (conservative on paired data)."""
    out: dict[str, Any] = {}
    paired = bool(a.get("per_example") and b.get("per_example"))
    for key, name in (("worst_case", "worst_case_acc"), ("clean", "clean_acc")):
        if paired:
            r = paired_bootstrap([from_bits(a["per_example"][key])], [from_bits(b["per_example"][key])])
            out[key] = {"diff": r["diff"], "ci": r["diff_ci"]}
        else:
            out[key] = {"diff": a[name] - b[name],
                        "ci": list(newcombe(a[name], a["data"]["n"], b[name], b["data"]["n"]))}
    out["interval"] = ("paired bootstrap over the images (2,000 resamples)" if paired else
                       "Newcombe's interval for independent samples (no per-example records; conservative)")
    return out


def _points(d: dict[str, Any]) -> str:
    lo, hi = d["ci"]
    return f"{100 * d['diff']:+.2f} points [95% CI {100 * lo:+.2f}, {100 * hi:+.2f}]"


def _folder_name(info: dict[str, Any]) -> str:
    """A checkpoint's name as a user sees it: its folder (``zoo/<id>``, a run directory), not ``best``."""
    d = Path(info["dir"])
    return d.parent.name if d.name == "best" else d.name


def _pair_lines(infos: list[dict[str, Any]]) -> list[str]:
    """The card's comparison of each AGAIN model with its twin, in numbers and in words."""
    lines: list[str] = []
    for a, t in twin_pairs(infos):
        c = compare(infos[a]["eval"], infos[t]["eval"])
        lo, hi = c["worst_case"]["ci"]
        word = ("AGAIN is more robust than its twin beyond the interval" if lo > 0 else
                "AGAIN is less robust than its twin beyond the interval" if hi < 0 else
                "no difference in robustness beyond the interval")
        lines += [f"- `{_folder_name(infos[a])}` minus its twin `{_folder_name(infos[t])}` (same backbone, data and evaluation): adaptive worst "
                  f"case {_points(c['worst_case'])}, clean {_points(c['clean'])}; {c['interval']}. "
                  f"Reading: {word}."]
    return ["## AGAIN against its twin", ""] + lines + [""] if lines else []


def _eval_table(ev: dict[str, Any]) -> list[str]:
    cols = list(ev["columns"])
    lines = ["| " + " | ".join(["worst case"] + cols) + " |", "|---" * (len(cols) + 1) + "|",
             "| " + " | ".join([f"**{pct(ev['worst_case_acc'])}**"] + [pct(ev["columns"][c]) for c in cols]) + " |"]
    return lines


def model_card(path: str | Path, repo_id: str | None = None) -> str:
    """The Hub README.md of one checkpoint (``repo_id``: the repo it is pushed to, for the snippet)."""
    info = load_checkpoint_info(path)
    cfg, ev, recipe = info["config"], info["eval"], info["recipe"]
    ds = _dataset(info)
    meta = {"license": (cfg.get("pretrained_cfg") or {}).get("license", "apache-2.0"), "library_name": "againzoo",
            "pipeline_tag": "image-classification",
            "tags": ["image-classification", "adversarial-robustness", "adversarial-training", "againzoo", "timm"]
            + (["again"] if cfg.get("again") else []),
            "datasets": [ds], "metrics": ["accuracy"], "model-index": model_index(info)}
    name = recipe.get("name") or cfg.get("architecture")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    lines += [f"{_method(recipe, cfg)} of `{cfg['architecture']}` on {DATASET_NAMES.get(ds, ds)}, trained and "
              f"evaluated with [againzoo](https://github.com/againzoo/againzoo).", ""]
    lines += ["## Use", "", "```python", "import againzoo", f'model = againzoo.from_pretrained("{repo_id or "<this repo id>"}")',
              "logits = model(images)  # float images in [0, 1], NCHW; normalisation is inside", "```", ""]
    lines += ["## Robustness (measured)", "", f"{ev['suite']} suite, {ev['norm']} eps={eps_str(ev['eps'])}, "
              f"{_data_line(ev)}; per-example worst case over every attack of the suite:", ""] + _eval_table(ev) + [""]
    aa_line = _autoattack_line(ev)
    if aa_line:
        lines += [aa_line + ".", ""]
    gate = _gate_lines(ev, cfg)
    if gate:
        lines += [" ".join(gate), ""]
    if ev.get("reference"):
        ref = ev["reference"]
        lines += [f"Reference (not measured here): {ref['source']}." + (f" {ref['caveat']}." if ref.get("caveat") else ""), ""]
    if info["weights_sha256"]:
        lines += [f"Measured on the weights with sha256 `{info['weights_sha256']}` (`model.safetensors`).", ""]
    lines += ["## Training", "", f"Recipe `{name}` (in `config.json` and `recipe.yaml`): {recipe.get('description', '')}",
              "", f"Training cost: {_training(info)}.", ""]
    lines += ["## Intended use", "", "Research on adversarial robustness: a baseline to compare defences and "
              "attacks against. Not a certified or production-hardened classifier.", ""]
    lines += ["## Limitations", ""] + [f"- {x}" for x in _limitations(info)] + [""]
    lines += ["## Citation", "", "Lin et al., *Adversarial Training with Attribution Span Enlargement and Hybrid "
              "Feature Fusion*, CVPR 2023.", ""]
    return "\n".join(lines)


def _backbone_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """The model arguments that shape the backbone (the AGAIN options have their own line)."""
    again = set((cfg.get("again") or {}).keys())
    return {k: v for k, v in (cfg.get("model_args") or {}).items() if k not in again}


NOTES = "NOTES.md"  # zoo/NOTES.md: what a user must read before choosing a model (the study's verdict)


def _deployed_lines(folder: Path) -> list[str]:
    """The robustness of a model's ONNX exports, measured on the files (``deployed.json``), if recorded."""
    path = Path(folder) / "deployed.json"
    if not path.exists():
        return []
    deployed = json.loads(path.read_text())
    check_record(deployed, Path(folder) / "model.safetensors", path)
    lines = ["Deployed as ONNX (`againzoo zoo deployed`; each file exported, verified and attacked as it is: the "
             "suite's attacks transferred from these weights, and Square on the file):", "",
             "| precision | file MB | agreement with PyTorch | clean | transfer worst case | Square | worst case [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    measured = {p: r for p, r in deployed["records"].items() if "refused" not in r}
    for precision, r in deployed["records"].items():
        if "refused" in r:  # the export's verification refused the file: what refused it, nothing attacked
            v = r.get("verification") or {}
            figures = (f"{pct(v['top1_agreement'])} | {pct(v['clean_acc'])} (PyTorch {pct(v['torch_clean_acc'])})"
                       if v else "- | -")
            lines.append(f"| {precision} | not written | {figures} | refused by the export's check (at least "
                         f"{100 * r['rule']['min_agreement']:.0f}% agreement, at most "
                         f"{100 * r['rule']['max_clean_drop']:.0f} point of clean accuracy lost) | - | - |")
            continue
        cols = r["columns"]
        transfer = min((v for k, v in cols.items() if k.startswith("transfer")), default=float("nan"))
        square = next((v for k, v in cols.items() if k.startswith("Square")), float("nan"))
        agree = (r.get("verification") or {}).get("top1_agreement")
        lo, hi = r["worst_case_ci95"]
        lines.append(f"| {precision} | {r['file_mb']:.2f} | {'exact (parity)' if agree is None else pct(agree)} | "
                     f"{pct(r['clean_acc'])} | {pct(transfer)} | {pct(square)} | **{pct(r['worst_case_acc'])}** "
                     f"[{pct(lo)}, {pct(hi)}] |")
    if measured:
        first = next(iter(measured.values()))
        lines += ["", f"On {first['data'].get('evaluated', '')}; Square with {first['square_queries']} queries."]
    return lines + [""]


def zoo_card(paths: list[str | Path], notes: str | None = None) -> str:
    """The zoo's MODEL_CARD.md: ``notes`` (the zoo's ``NOTES.md``) first, then one section per
    checkpoint, generated from its run directory."""
    infos = [load_checkpoint_info(p) for p in paths]
    meta = {"library_name": "againzoo", "pipeline_tag": "image-classification", "license": "apache-2.0",
            "tags": ["image-classification", "adversarial-robustness", "adversarial-training", "againzoo", "timm"],
            "datasets": sorted({_dataset(i) for i in infos}), "metrics": ["accuracy"],
            "model-index": [m for i in infos for m in model_index(i)]}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", CARD_TITLE, "",
             "Generated by `againzoo card` from the run directories' `eval.json`, `config.json` and "
             "`metrics.jsonl`; regenerate it rather than editing it. Accuracies are percentages measured by "
             "againzoo's evaluation; the headline is the per-example worst case over the adaptive suite.", ""]
    if notes:
        lines += ["## Read this first", "", notes.strip(), ""]
    if not infos:
        lines += ["No models yet.", ""]
    lines += ["| model | method | data | suite | worst case | official AA | clean | gate |",
              "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        ev = info["eval"]
        lines.append(f"| {info['recipe'].get('name', info['config']['architecture'])} | "
                     f"{_method(info['recipe'], info['config'])} | {_data_line(ev)} | {ev['suite']}, "
                     f"{ev['norm']} eps={eps_str(ev['eps'])} | **{pct(ev['worst_case_acc'])}** | {_aa_cell(ev)} | "
                     f"{pct(ev['clean_acc'])} | {_gate_cell(ev, info['config'])} |")
    lines.append("")
    lines += _pair_lines(infos)
    for info in infos:
        ev, recipe, cfg = info["eval"], info["recipe"], info["config"]
        lines += [f"## {recipe.get('name', cfg['architecture'])}", "",
                  f"- Architecture: `{cfg['architecture']}` (backbone `{cfg.get('backbone', cfg['architecture'])}`), "
                  f"backbone arguments `{json.dumps(_backbone_args(cfg))}`, "
                  f"AGAIN: `{json.dumps(cfg['again']) if cfg.get('again') else 'none'}`",
                  f"- Recipe: `{recipe.get('name', '?')}`: {recipe.get('description', '')}",
                  f"- Training data: {DATASET_NAMES.get(_dataset(info), _dataset(info))}"
                  f" ({(recipe.get('data') or {}).get('dataset', '?')}, held-out selection slice of "
                  f"{(recipe.get('data') or {}).get('val_size', '?')} training images)",
                  f"- Training cost: {_training(info)}",
                  f"- Evaluation: {ev['suite']} suite, {ev['norm']} eps={eps_str(ev['eps'])}, {_data_line(ev)}"]
        aa_line = _autoattack_line(ev)
        lines += ([f"- {aa_line}"] if aa_line else []) + [f"- {x}" for x in _gate_lines(ev, cfg)] + [""]
        lines += _eval_table(ev) + [""]
        per = ", ".join(f"{k} {pct(v['acc'])}" for k, v in ev["attacks"].items())
        lines += [f"Per attack: {per}.", ""]
        lines += _deployed_lines(info["dir"])
        lines += ["Intended use: research baselines for adversarial robustness; not a certified classifier.", "",
                  "Limitations:", ""] + [f"- {x}" for x in _limitations(info)] + [""]
    return "\n".join(lines)


def _trained_cell(entry: Any, config: dict[str, Any]) -> str:
    """Where and how long a published model trained: the registry's record, else its config's device."""
    t = entry.training or {}
    on = config.get("trained_on") or {}
    device = t.get("device") or on.get("device")
    if not device:
        return "-"
    kind = "CPU" if str(device).startswith("cpu") else device
    minutes = f", {t['train_minutes']:g} min" if t.get("train_minutes") is not None else ""
    epochs = f"{t['epochs']} epochs, " if t.get("epochs") else ""
    return f"{epochs}{kind} ({t.get('precision') or on.get('precision', '?')}){minutes}"


MODELS_BEGIN, MODELS_END = "<!-- models:begin -->", "<!-- models:end -->"


def models_table(registry: Path | None = None) -> str:
    """The published models (the registry and each entry's eval.json in ``zoo/``) as the README's
    Markdown table: clean and official AutoAttack accuracy, the adaptive worst case with its 95%
    interval, the gate verdict and the registry's note. ``againzoo zoo table`` prints it."""
    from .registry import entries, local_dir

    rows = ["| model | data | clean | official AutoAttack | adaptive worst case [95% CI] | gate | trained | note |",
            "|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries(registry), key=lambda e: -e.metrics.get("worst_case", -1.0)):  # the most robust first
        folder = local_dir(e, registry)
        ev = json.loads((folder / "eval.json").read_text()) if folder and (folder / "eval.json").exists() else None
        config = json.loads((folder / "config.json").read_text()) if folder and (folder / "config.json").exists() else {}
        if folder is not None:  # the registry, the eval record and the file must name the same weights
            actual = sha256_of(folder / "model.safetensors")
            if actual != e.sha256:
                raise CheckpointError(f"the registry's sha256 for {e.model} ({e.sha256[:16]}...) is not that of "
                                      f"{folder / 'model.safetensors'} ({actual[:16]}...): rebuild or re-register it")
            if ev is not None:
                check_record(ev, folder / "model.safetensors", folder / "eval.json", actual)
        m = e.metrics
        if ev is not None:
            n = int(ev["data"]["n"])
            lo, hi = wilson(ev["worst_case_acc"], n)
            aa_text = _aa_cell(ev)
            data = f"{DATASET_NAMES.get(e.dataset, e.dataset)}, {_data_line(ev)}"
            worst = f"**{pct(ev['worst_case_acc'])}** [{pct(lo)}, {pct(hi)}]"
            clean, gate = pct(ev["clean_acc"]), _gate_cell(ev, config)
        else:
            data, clean = DATASET_NAMES.get(e.dataset, e.dataset), pct(m.get("clean", float("nan")))
            aa_text, worst, gate = pct(m.get("autoattack", float("nan"))), f"**{pct(m.get('worst_case', float('nan')))}**", "-"
        rows.append(f"| `{e.model}` | {data} | {clean} | {aa_text} | {worst} | {gate} | {_trained_cell(e, config)} | "
                    f"{e.note or ''} |")
    if len(rows) == 2:
        rows.append("| (none published yet) | | | | | | | |")
    return "\n".join(rows)


def update_models_table(path: str | Path, registry: Path | None = None) -> bool:
    """Rewrite the table between the models markers of ``path``; True when it changed."""
    path = Path(path)
    text = path.read_text()
    if MODELS_BEGIN not in text or MODELS_END not in text:
        raise CheckpointError(f"{path} has no {MODELS_BEGIN} ... {MODELS_END} block to update")
    new = text[:text.index(MODELS_BEGIN) + len(MODELS_BEGIN)] + "\n" + models_table(registry) + "\n" + \
        text[text.index(MODELS_END):]
    if new != text:
        from .io import atomic_write_text

        atomic_write_text(path, new)
    return new != text
