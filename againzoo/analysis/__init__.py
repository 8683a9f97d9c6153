"""Attribution-span analysis of checkpoints (AGAIN section 3 and section 5.6).

Each ``run_*`` function takes run directories (their ``best/`` checkpoint) or checkpoint
directories, writes one PNG into ``out_dir`` and merges its numbers into ``out_dir/analysis.json``
under the command's name; the CLI is ``againzoo analyze cam|asc|corruption|embedding|curves``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapter import AgainModel
from ..errors import ConfigError, OutputError
from ..integrity import WEIGHTS_KEY, sha256_of
from ..io import atomic_write_json, writable_dir
from .asc import asc, compare, dataset_asc
from .cam import CamResult, cam
from .corruption import corruption_experiment
from .curves import gaps
from .embedding import compactness, embedding_experiment, penultimate
from . import plots

__all__ = ["CamResult", "asc", "cam", "compactness", "compare", "corruption_experiment", "dataset_asc",
           "embedding_experiment", "gaps", "penultimate", "run_asc", "run_cam", "run_corruption",
           "run_curves", "run_embedding"]


def _load(run: str | Path, data_dir: str | None, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict, dict]:
    from ..evaluation import eval_data
    from ..checkpoint import CONFIG, WEIGHTS
    from ..pretrained import from_pretrained

    path = Path(run)
    if (path / "best" / CONFIG).exists():
        path = path / "best"
    model, wdir = from_pretrained(path, return_dir=True)
    config = json.loads((wdir / CONFIG).read_text())
    config[WEIGHTS_KEY] = sha256_of(wdir / WEIGHTS)  # every analysis record names the weights it measured
    x, y, data = eval_data(config, data_dir, None, n)
    return model, x, y, data, config


def _name(run: str | Path) -> str:
    p = Path(run)
    return p.parent.name if p.name == "best" else p.name


def _names(runs: list[str | Path]) -> list[str]:
    """Short names, or full paths when two runs share a folder name."""
    names = [_name(r) for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def _record(out_dir: Path, key: str, result: dict[str, Any]) -> dict[str, Any]:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"cannot write the analysis into {out_dir}: it is a file (expected a folder)")
    writable_dir(out_dir)
    path = out_dir / "analysis.json"
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OutputError(f"{path} is not valid JSON (a damaged earlier analysis?): move it away or delete it, "
                          f"it is merged into, not replaced") from None
    if not isinstance(current, dict):
        raise OutputError(f"{path} is not an analysis record (expected a JSON object): move it away or delete it")
    current[key] = {k: v for k, v in result.items() if not k.startswith("_")}
    atomic_write_json(path, current)
    return current[key]


def _eps(config: dict) -> float:
    return float(((config.get("recipe") or {}).get("attack") or {}).get("eps", 8 / 255))


def check_args(n: int | None = None, lam: float | None = None, eps: float | None = None) -> None:
    """One-line errors for the analyses' numbers: n >= 1, lambda in (0, 1], eps in (0, 1]."""
    if n is not None and n < 1:
        raise ConfigError(f"the number of images must be >= 1, got {n}")
    if lam is not None and not 0 < lam <= 1:
        raise ConfigError(f"lambda (Eq. 2's threshold, a share of the map's maximum) must be in (0, 1], got {lam}")
    if eps is not None and not 0 < eps <= 1:
        raise ConfigError(f"eps must be in (0, 1] (images are in [0, 1]), got {eps}")


def run_cam(run: str | Path, out_dir: str | Path, n: int = 8, data_dir: str | None = None) -> dict[str, Any]:
    """CAM grids (Fig. 1 style): images, the main head's CAM and, for AGAIN models, the ASE head's."""
    check_args(n)
    out_dir = Path(out_dir)
    model, x, y, data, config = _load(run, data_dir, n)
    size = tuple(x.shape[-2:])
    main = cam(model, x, y)
    rows = [(f"{main.method} (main)", main.upsampled(size).numpy(), "overlay")]
    result: dict[str, Any] = {"run": str(run), WEIGHTS_KEY: config[WEIGHTS_KEY], "data": data, "layer": main.layer, "main_method": main.method,
                              "asc_main": asc(main.upsampled(size)).tolist()}
    if isinstance(model, AgainModel):
        ase = cam(model, x, y, head="ase")
        rows.append((f"{ase.method} (ASE)", ase.upsampled(size).numpy(), "overlay"))
        result["asc_ase"] = asc(ase.upsampled(size)).tolist()
    titles = [f"y={int(t)}" for t in y]
    result["png"] = str(plots.image_grid(out_dir / "cam.png", x.numpy(), rows, titles))
    return _record(out_dir, "cam", result)


def run_asc(run_a: str | Path, run_b: str | Path, out_dir: str | Path, n: int = 1000, lam: float = 0.5,
            data_dir: str | None = None) -> dict[str, Any]:
    """Section 3, Q1: per-image ASC (Eq. 2) of two models on the same images."""
    check_args(n, lam)
    out_dir = Path(out_dir)
    model_a, x, y, data, config_a = _load(run_a, data_dir, n)
    model_b, *_, config_b = _load(run_b, data_dir, 0)
    scores = []
    for m in tqdm([model_a, model_b], desc="ASC", leave=False):
        scores.append(dataset_asc(m, x, y, lam))
    a, b = scores
    result = {"run_a": str(run_a), "run_b": str(run_b), "weights_sha256_a": config_a[WEIGHTS_KEY],
              "weights_sha256_b": config_b[WEIGHTS_KEY], "lambda": lam, "data": data, **compare(a, b),
              "asc_a": a.tolist(), "asc_b": b.tolist()}
    result["png"] = str(plots.asc_scatter(out_dir / "asc.png", a.numpy(), b.numpy(), _name(run_a), _name(run_b), lam))
    return _record(out_dir, "asc", result)


def run_corruption(standard_run: str | Path, robust_run: str | Path, out_dir: str | Path, n: int = 1000,
                   lam: float = 0.5, eps: float | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Table 1: accuracy on original/corrupted clean and adversarial data (both-correct examples)."""
    check_args(n, lam, eps)
    out_dir = Path(out_dir)
    std, x, y, data, config = _load(standard_run, data_dir, n)
    rob, *_, rob_config = _load(robust_run, data_dir, 0)
    r = corruption_experiment(std, rob, x, y, eps if eps is not None else _eps(config), lam=lam)
    r.update(standard_run=str(standard_run), robust_run=str(robust_run), data=data,
             weights_sha256_standard=config[WEIGHTS_KEY], weights_sha256_robust=rob_config[WEIGHTS_KEY])
    if r["n_used"]:
        t = r["_tensors"]
        k = min(8, r["n_used"])
        xs = t["x"][:k]
        ys = y[torch.tensor(r["used_indices"][:k])]
        size = tuple(xs.shape[-2:])
        rows = [("CAM standard", cam(std, xs, ys).upsampled(size).numpy(), "overlay"),
                ("CAM robust", cam(rob, xs, ys).upsampled(size).numpy(), "overlay"),
                ("kept (white)", t["keep"][:k, 0].numpy(), "mask"),
                ("corrupted", (xs * t["keep"][:k]).numpy(), "image")]
        r["png"] = str(plots.image_grid(out_dir / "corruption.png", xs.numpy(), rows))
    return _record(out_dir, "corruption", r)


def run_embedding(runs: list[str | Path], out_dir: str | Path, n: int = 500, eps: float | None = None,
                  data_dir: str | None = None) -> dict[str, Any]:
    """Figure 4: 2-D embeddings of penultimate features, clean and adversarial, with compactness."""
    check_args(n, eps=eps)
    out_dir = Path(out_dir)
    results = []
    for run, name in tqdm(list(zip(runs, _names(runs))), desc="embedding", leave=False):
        model, x, y, data, config = _load(run, data_dir, n)
        r = embedding_experiment(model, x, y, eps if eps is not None else _eps(config))
        r.update(run=str(run), data=data, **{WEIGHTS_KEY: config[WEIGHTS_KEY]})
        results.append((name, r))
    png = plots.embedding_plot(out_dir / "embedding.png", results)
    summary = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results}
    return _record(out_dir, "embedding", {"runs": summary, "png": str(png)})


def run_curves(runs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Figure 3: train vs test clean and robust accuracy per epoch, and the gaps."""
    out_dir = Path(out_dir)
    results = [gaps(Path(r).parent if Path(r).name == "best" else r) for r in runs]
    png = plots.gap_plot(out_dir / "curves.png", results)
    return _record(out_dir, "curves", {"runs": dict(zip(_names(runs), results)), "png": str(png)})
