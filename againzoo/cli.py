"""The ``againzoo`` command line: a thin typer layer over the Python API.

User mistakes (:class:`~againzoo.errors.UserError`) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import __version__
from .errors import ConfigError, UserError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="AGAIN adversarial training, robustness evaluation and the againzoo model zoo.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"againzoo {__version__}")
        raise typer.Exit()


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever ``sys.stderr`` is at the time (the CLI's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """The ``againzoo`` loggers: warnings by default, ``-v`` info (run start, epoch summaries, where
    weights were loaded from), ``-vv`` debug, ``-q`` errors only."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    log = logging.getLogger("againzoo")
    log.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)


_GLOBAL = {"quiet": False}


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit"),
             verbose: int = typer.Option(0, "-v", "--verbose", count=True,
                                         help="log more: -v run progress (epoch summaries, weight sources), -vv debug"),
             quiet: bool = typer.Option(False, "-q", "--quiet", help="errors only, and no progress bars")) -> None:
    """AGAIN adversarial training, robustness evaluation and the againzoo model zoo."""
    configure_logging(verbose, quiet)
    _GLOBAL["quiet"] = quiet


def _progress(quiet: bool) -> bool:
    """Progress bars unless the command's or the global ``--quiet`` says no."""
    return not (quiet or _GLOBAL["quiet"])


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    return wrapper


AA_BUDGET_HELP = ("a reduced official AutoAttack budget for quick checks, N_ITER,N_TARGETS,N_QUERIES "
                  "(e.g. 5,2,10); results say REDUCED and are not comparable with leaderboards")


def parse_aa_budget(text: str | None) -> dict[str, dict[str, int]]:
    """``--aa-budget 5,2,10`` -> ``{"aa_budget": {"n_iter": 5, "n_targets": 2, "n_queries": 10}}``."""
    if text is None:
        return {}
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--aa-budget expects three positive integers N_ITER,N_TARGETS,N_QUERIES, got {text!r}")
    return {"aa_budget": dict(zip(("n_iter", "n_targets", "n_queries"), (int(p) for p in parts)))}


def require_extra(extra: str, modules: tuple[str, ...]) -> None:
    """A one-line error naming the pip extra when an optional package is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"this command needs {', '.join(missing)}: pip install 'againzoo[{extra}]'")


def _cpu_job(device: str) -> None:
    """Before a CPU job: intra-op threads only on the idle cores (againzoo/cpu.py)."""
    from .cpu import configure_threads
    from .training.trainer import resolve_device

    if resolve_device(device).type == "cpu":
        note = configure_threads()
        if note:
            typer.echo(note, err=True)


@app.command()
@user_errors
def train(
    recipe: Optional[str] = typer.Argument(None, help="recipe YAML file or shipped recipe name (see `againzoo recipes`)"),
    set_: List[str] = typer.Option([], "--set", help="override a recipe key: --set attack.steps=5"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="dataset folder (default: recipe, then $AGAINZOO_DATA)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this run directory"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train a recipe; writes a run directory (checkpoints, metrics.jsonl, curves.png)."""
    from .training import train as train_fn
    from .training.distributed import env_from_launcher

    _cpu_job(device)
    run_dir = train_fn(recipe, resume=resume, device=device, data_dir=data_dir, overrides=set_, progress=_progress(quiet))
    if env_from_launcher().is_main:
        typer.echo(f"run dir: {run_dir}")


@app.command("eval")
@user_errors
def eval_cmd(
    source: str = typer.Argument(..., help="run directory (its best/ checkpoint by default) or checkpoint dir"),
    suite: str = typer.Option("quick", "--suite", help="quick, paper, full, or aa (RobustBench's protocol: "
                              "the official standard AutoAttack only)"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    n_examples: int = typer.Option(1000, "--n-examples", "-n"),
    eps: Optional[str] = typer.Option(None, "--eps", help="budget, e.g. 8/255 (default: the training recipe's)"),
    split: Optional[str] = typer.Option(None, "--split", help="test or test_lossless (default: lossless if available)"),
    last: bool = typer.Option(False, "--last", help="evaluate the last epoch instead of best/"),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(256, "--batch-size"),
    aa_budget: Optional[str] = typer.Option(None, "--aa-budget", help=AA_BUDGET_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the eval.json result instead of the table"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Evaluate robustness with an attack suite; writes eval.json beside the weights."""
    from .evaluation import evaluate_checkpoint, markdown_table
    from .gate_diagnostics import describe as describe_gate
    from .recipes import parse_number

    try:
        eps_value = None if eps is None else float(parse_number(eps))
    except ValueError as e:
        raise ConfigError(f"--eps: {e}") from None
    _cpu_job(device)
    result, wdir = evaluate_checkpoint(source, suite, data_dir, n_examples, eps_value, split, device, batch_size,
                                       "last" if last else "best", progress=_progress(quiet) and not as_json,
                                       **parse_aa_budget(aa_budget))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    d = result["data"]
    typer.echo(f"{result['suite']} suite, eps={result['eps']:.5f} ({result['norm']}), {d['n']} images of "
               f"{d['name']}/{d['split']} ({'lossless' if d.get('lossless') else 'lossy JPEG-75'})")
    typer.echo(markdown_table(result))
    for f in result["flags"]:
        if not f["passed"]:
            typer.echo(f"FLAG {f['check']}: {f['detail']}")
    aa = result.get("autoattack")
    if aa:
        runs = ", ".join(f"{gate} gate {100 * r['acc']:.2f}" for gate, r in aa["runs"].items())
        typer.echo(f"AutoAttack: official pyautoattack {aa['version']} (standard settings: {', '.join(aa['attacks'])}); {runs}"
                   + ("" if aa["budget"] == "standard" else f"; REDUCED budget {aa['budget']}"))
    if result.get("gate"):
        typer.echo(describe_gate(result["gate"]))
    typer.echo(f"wrote {wdir / 'eval.json'}" + (f" and {wdir / 'robustbench.json'}" if "AA" in result["columns"] else ""))


@app.command()
@user_errors
def push(
    run_dir: Path = typer.Argument(..., help="run directory (pushes best/ when present) or checkpoint dir"),
    repo_id: str = typer.Option(..., "--repo-id", help="ORG/NAME on the Hugging Face Hub"),
    private: bool = typer.Option(False, "--private"),
    revision: Optional[str] = typer.Option(None, "--revision", help="branch to push to"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the files and the card, push nothing"),
) -> None:
    """Push a checkpoint with its eval.json and a generated model card to the Hub."""
    from .hub import push as push_fn

    plan = push_fn(run_dir, repo_id, private, revision, dry_run)
    typer.echo(f"{'would push' if dry_run else 'pushed'} to {plan['repo_id']}"
               f"{' (private)' if private else ''}{f' @ {revision}' if revision else ''}:")
    for name in plan["files"]:
        size = plan["sizes"].get(name)
        typer.echo(f"  {name}" + (f"  ({size:,} bytes)" if size is not None else "  (generated model card)"))
    if dry_run:
        typer.echo("--- README.md ---")
        typer.echo(plan["card"])
    else:
        typer.echo(plan["commit"])


@app.command()
@user_errors
def card(
    run_dirs: List[Path] = typer.Argument(..., help="evaluated run directories"),
    output: Path = typer.Option(Path("MODEL_CARD.md"), "--output", "-o"),
    readme: bool = typer.Option(False, "--readme", help="also write each checkpoint's Hub README.md"),
) -> None:
    """Regenerate MODEL_CARD.md (and optionally per-checkpoint README.md cards) from run dirs."""
    from .card import load_checkpoint_info, model_card, zoo_card
    from .io import atomic_write_text

    atomic_write_text(output, zoo_card(list(run_dirs)))
    typer.echo(f"wrote {output}")
    if readme:
        for d in run_dirs:
            target = load_checkpoint_info(d)["dir"] / "README.md"
            atomic_write_text(target, model_card(d))
            typer.echo(f"wrote {target}")


@app.command()
@user_errors
def export(
    source: str = typer.Argument(..., help="run directory (its best/), checkpoint dir or Hub repo id"),
    output: Path = typer.Option(..., "--output", "-o", help="the .onnx file to write"),
    opset: int = typer.Option(18, "--opset"),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size"),
    with_softmax: bool = typer.Option(False, "--with-softmax", help="output probabilities instead of logits"),
    with_aux: bool = typer.Option(False, "--with-aux", help="also output the ASE head's logits"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="for the real-image parity check"),
) -> None:
    """Export the inference path to ONNX and verify onnxruntime against PyTorch (fails on mismatch)."""
    require_extra("onnx", ("onnx", "onnxscript", "onnxruntime"))
    from .onnx import ParityError, export_checkpoint

    try:
        report = export_checkpoint(source, output, opset, batch, with_softmax, with_aux, data_dir)
    except ParityError as e:
        typer.echo(f"PARITY FAILED: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {report['output']} (opset {report['opset']}, batch {report['batch']}, outputs {report['outputs']})")
    for name, r in report["sets"].items():
        gate = f", gate agreement {r['gate_agreement']:.4f}" if "gate_agreement" in r else ""
        typer.echo(f"  {name:<12} n={r['n']:<4} top-1 agreement {r['top1_agreement']:.4f}{gate}, "
                   f"max |logit diff| {r['max_abs_diff']:.2e}")


analyze_app = typer.Typer(no_args_is_help=True, help="Attribution-span analysis: PNG figures + analysis.json.")
app.add_typer(analyze_app, name="analyze")
OUT = typer.Option(Path("analysis"), "--out", "-o", help="output folder (analysis.json is merged)")
DATA = typer.Option(None, "--data-dir")


@analyze_app.command("cam")
@user_errors
def analyze_cam(run: Path, n: int = typer.Option(8, "-n"), out: Path = OUT, data_dir: Optional[str] = DATA) -> None:
    """CAM maps (Eq. 1) of the main head and, for AGAIN models, the ASE head."""
    from .analysis import run_cam

    r = run_cam(run, out, n, data_dir)
    typer.echo(f"{r['main_method']} at layer {r['layer']}; wrote {r['png']} and {out / 'analysis.json'}")


@analyze_app.command("asc")
@user_errors
def analyze_asc(run_a: Path, run_b: Path, n: int = typer.Option(1000, "-n"),
                lam: float = typer.Option(0.5, "--lambda", help="threshold of Eq. 2"), out: Path = OUT,
                data_dir: Optional[str] = DATA) -> None:
    """Attribution Span Coverage (Eq. 2) of two models; share of images where A's ASC is larger."""
    from .analysis import run_asc

    r = run_asc(run_a, run_b, out, n, lam, data_dir)
    typer.echo(f"ASC (lambda={lam}) on {r['n']} images: mean A {r['mean_a']:.4f}, mean B {r['mean_b']:.4f}; "
               f"A > B on {100 * r['share_a_greater']:.2f}% of images; wrote {r['png']}")


@analyze_app.command("corruption")
@user_errors
def analyze_corruption(standard_run: Path, robust_run: Path, n: int = typer.Option(1000, "-n"),
                       lam: float = typer.Option(0.5, "--lambda"), eps: Optional[float] = typer.Option(None, "--eps"),
                       out: Path = OUT, data_dir: Optional[str] = DATA) -> None:
    """Table 1: accuracy on original/corrupted clean and adversarial data."""
    from .analysis import run_corruption

    r = run_corruption(standard_run, robust_run, out, n, lam, eps, data_dir)
    typer.echo(f"{r['n_used']} of {r['n_total']} images classified correctly by both models")
    for name in ("standard", "robust"):
        if name in r:
            v = r[name]
            typer.echo(f"  {name:<9} original clean {100 * v['original_clean']:.1f}%  corrupted clean "
                       f"{100 * v['corrupted_clean']:.1f}%  original adv {100 * v['original_adv']:.1f}%  "
                       f"corrupted adv {100 * v['corrupted_adv']:.1f}%")


@analyze_app.command("embedding")
@user_errors
def analyze_embedding(runs: List[Path], n: int = typer.Option(500, "-n"), eps: Optional[float] = typer.Option(None, "--eps"),
                      out: Path = OUT, data_dir: Optional[str] = DATA) -> None:
    """Figure 4: t-SNE of penultimate features, clean and adversarial, with a compactness score."""
    from .analysis import run_embedding

    r = run_embedding(list(runs), out, n, eps, data_dir)
    for name, v in r["runs"].items():
        typer.echo(f"{name}: compactness clean {v['compactness_clean']:.4f}, adversarial {v['compactness_adversarial']:.4f}")
    typer.echo(f"wrote {r['png']}")


@analyze_app.command("curves")
@user_errors
def analyze_curves(runs: List[Path], out: Path = OUT) -> None:
    """Figure 3: generalisation gaps from metrics.jsonl."""
    from .analysis import run_curves

    r = run_curves(list(runs), out)
    for name, v in r["runs"].items():
        typer.echo(f"{name}: final standard gap {100 * v['final_standard_gap']:.2f} points, "
                   f"robust gap {100 * v['final_robust_gap']:.2f} points")
    typer.echo(f"wrote {r['png']}")


zoo_app = typer.Typer(no_args_is_help=True, help="Build the zoo's published models; join results sent back in parts.")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
@user_errors
def zoo_build(
    ids: List[str] = typer.Argument(None, help="zoo entries to build (default: all: again_resnet18 resnet18_cifar)"),
    budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", help="size the epochs (or skip entries) "
                                                   "to finish inside this many minutes, from a measured throughput"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    device: str = typer.Option("auto", "--device"),
    work_dir: Path = typer.Option(Path("runs/zoo"), "--work-dir", help="run directories and manifest.json"),
    zoo_dir: Path = typer.Option(Path("zoo"), "--zoo-dir", help="where zoo/<id>/ is written"),
    card: Path = typer.Option(Path("MODEL_CARD.md"), "--card"),
    set_: List[str] = typer.Option([], "--set", help="override a key of every recipe: --set epochs=2"),
    n_examples: int = typer.Option(1000, "--n-examples", "-n"),
    eval_batch_size: int = typer.Option(256, "--eval-batch-size", help="batch of the evaluation's attacks"),
    aa_budget: Optional[str] = typer.Option(None, "--aa-budget", help=AA_BUDGET_HELP),
    parts_dir: Optional[Path] = typer.Option(None, "--parts-dir", help="also write each finished entry as a tar "
                                             "in parts here (with the registry, card and manifest)"),
    split_mb: float = typer.Option(16, "--split-mb", help="largest part, MiB"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Train, publish (fp16), evaluate the published weights, register and re-card the zoo's models."""
    from .zoo import build

    _cpu_job(device)
    m = build(ids or None, zoo_dir=zoo_dir, card=card, work_dir=work_dir, budget_minutes=budget_minutes,
              data_dir=data_dir, device=device, overrides=set_, n_examples=n_examples,
              eval_batch_size=eval_batch_size, parts_dir=parts_dir, split_mb=split_mb, progress=_progress(quiet),
              eval_kw=parse_aa_budget(aa_budget))
    for e in m["entries"]:
        if "skipped" in e:
            typer.echo(f"{e['id']}: SKIPPED ({e['skipped']})")
        else:
            r = e["registry"]["metrics"]
            typer.echo(f"{e['id']}: {e['epochs']} of {e['recipe_epochs']} epochs, trained {e['train_s']} s, evaluated "
                       f"{e['eval_s']} s; clean {100 * r['clean']:.2f}, AA {100 * r.get('autoattack', float('nan')):.2f}, "
                       f"worst case {100 * r['worst_case']:.2f}")
            if "parts" in e:
                typer.echo(f"  packed into {len(e['parts'])} part(s) in {parts_dir}")
    typer.echo(f"wrote {work_dir / 'manifest.json'} and {card}")


@zoo_app.command("join")
@user_errors
def zoo_join(parts_dir: Path = typer.Argument(..., help="folder with NN-<id>.parts.json and NN-<id>.tar.NNN"),
             into: Path = typer.Option(Path("."), "--into", help="where the files are extracted")) -> None:
    """Check (sha256) and reassemble the parts of a zoo build, then extract them."""
    from .zoo import join

    for name in join(parts_dir, into):
        typer.echo(f"  {name}")


@app.command("recipes")
@user_errors
def list_recipes(as_json: bool = typer.Option(False, "--json", help="one JSON object: name -> description")) -> None:
    """List the shipped recipes."""
    from .recipes import shipped

    items = shipped()
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        typer.echo(f"{name:<{width}}  {desc}")


@app.command("models")
def list_models_cmd(pattern: str = typer.Argument("again_*"),
                    as_json: bool = typer.Option(False, "--json", help="a JSON list")) -> None:
    """List the zoo's model names (again_<any timm model> works too)."""
    from .factory import list_models

    names = list_models(pattern)
    if as_json:
        typer.echo(json.dumps(names))
        return
    for name in names:
        typer.echo(name)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
