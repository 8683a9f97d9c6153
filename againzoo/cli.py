"""The ``againzoo`` command line: a thin typer layer over the Python API.

User mistakes (:class:`~againzoo.errors.UserError`) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from .version import __version__
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

# -- one vocabulary: the same idea is spelled the same way in every command (tests/test_cli_conventions.py) --
VOCABULARY = {"output": ("--output", "-o"), "n_examples": ("--n-examples", "-n"), "data_dir": ("--data-dir",),
              "device": ("--device",), "quiet": ("--quiet", "-q"), "as_json": ("--json",),
              "batch_size": ("--batch-size",), "set_": ("--set",), "eps": ("--eps",), "overwrite": ("--overwrite",),
              "state_dir": ("--state-dir",)}
# old spellings still accepted for one release, with a note on stderr
DEPRECATED = {"--out": "--output"}


def output_option(default: Any, help: str) -> Any:
    return typer.Option(default, *VOCABULARY["output"], help=help)


def n_examples_option(default: int, help: str = "number of test images") -> Any:
    return typer.Option(default, *VOCABULARY["n_examples"], help=help)


def data_dir_option(help: str = "dataset folder (default: the recipe's, then $AGAINZOO_DATA)") -> Any:
    return typer.Option(None, *VOCABULARY["data_dir"], help=help)


DEVICE_OPTION = typer.Option("auto", *VOCABULARY["device"], help="cpu, cuda, cuda:N or auto")
QUIET_OPTION = typer.Option(False, *VOCABULARY["quiet"], help="no progress bars (the global -q also silences logs)")
OVERWRITE_OPTION = typer.Option(False, *VOCABULARY["overwrite"], help="replace an existing output that is not this "
                                "command's own kind of file (or a run directory without resumable state)")
STATE_DIR_OPTION = typer.Option(None, *VOCABULARY["state_dir"], help="keep each finished attack here; the same "
                                "command run again after an interruption continues where it stopped")


def deprecated_out_option() -> Any:
    return typer.Option(None, "--out", hidden=True, help="deprecated spelling of --output")


def _renamed(new: Any, old: Any, old_flag: str) -> Any:
    """The value of a renamed option: the old spelling wins when given, with a deprecation note."""
    if old is None:
        return new
    typer.echo(f"note: {old_flag} is deprecated and will be removed in the next release; use {DEPRECATED[old_flag]}",
               err=True)
    return old


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
    from .runtime import resolve_device

    if resolve_device(device).type == "cpu":
        note = configure_threads()
        if note:
            typer.echo(note, err=True)


@app.command()
@user_errors
def train(
    recipe: Optional[str] = typer.Argument(None, help="recipe YAML file or shipped recipe name (see `againzoo recipes`)"),
    set_: List[str] = typer.Option([], "--set", help="override a recipe key: --set attack.steps=5"),
    data_dir: Optional[str] = data_dir_option(),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this run directory"),
    output: Optional[Path] = output_option(None, "the folder the run directory goes into, <output>/<recipe name> "
                                           "(the recipe's output_dir; default: runs)"),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Train a recipe; writes a run directory (checkpoints, metrics.jsonl, curves.png)."""
    from .training import train as train_fn
    from .training.distributed import env_from_launcher

    if output is not None:
        if resume is not None:
            raise ConfigError("--output names where a new run goes; --resume continues a run where it is: give one")
        set_ = [*set_, f"output_dir={output}"]
    _cpu_job(device)
    run_dir = train_fn(recipe, resume=resume, device=device, data_dir=data_dir, overrides=set_, progress=_progress(quiet),
                       overwrite=overwrite)
    if env_from_launcher().is_main:
        typer.echo(f"run dir: {run_dir}")


@app.command("eval")
@user_errors
def eval_cmd(
    source: str = typer.Argument(..., help="run directory (its best/ checkpoint by default) or checkpoint dir"),
    suite: str = typer.Option("quick", "--suite", help="quick, paper, full, or aa (RobustBench's protocol: "
                              "the official standard AutoAttack only)"),
    data_dir: Optional[str] = data_dir_option(),
    n_examples: int = n_examples_option(1000),
    eps: Optional[str] = typer.Option(None, "--eps", help="budget, e.g. 8/255 (default: the training recipe's)"),
    split: Optional[str] = typer.Option(None, "--split", help="test or test_lossless (default: lossless if available)"),
    last: bool = typer.Option(False, "--last", help="evaluate the last epoch instead of best/"),
    device: str = DEVICE_OPTION,
    batch_size: int = typer.Option(256, "--batch-size", help="batch of the attacks"),
    aa_budget: Optional[str] = typer.Option(None, "--aa-budget", help=AA_BUDGET_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the eval.json result instead of the table"),
    quiet: bool = QUIET_OPTION,
    output: Optional[Path] = output_option(None, "where to write eval.json (default: beside the weights)"),
    overwrite: bool = OVERWRITE_OPTION,
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="for an .onnx SOURCE: the checkpoint it "
                                             "was exported from (the transfer attacks are crafted on it)"),
    queries: int = typer.Option(5000, "--queries", help="for an .onnx SOURCE: Square queries against the file"),
    state_dir: Optional[Path] = STATE_DIR_OPTION,
) -> None:
    """Evaluate robustness with an attack suite; writes eval.json beside the weights. An .onnx file is
    evaluated as deployed: the suite's attacks transferred from --checkpoint, and Square on the file."""
    from .evaluation import evaluate_checkpoint, markdown_table
    from .gate_diagnostics import describe as describe_gate
    from .recipes import parse_number

    if source.endswith(".onnx"):
        _eval_onnx(source, checkpoint, suite, data_dir, n_examples, queries, batch_size, output, as_json, quiet,
                   parse_aa_budget(aa_budget).get("aa_budget"), state_dir)
        return

    try:
        eps_value = None if eps is None else float(parse_number(eps))
    except ValueError as e:
        raise ConfigError(f"--eps: {e}") from None
    _cpu_job(device)
    result, wdir = evaluate_checkpoint(source, suite, data_dir, n_examples, eps_value, split, device, batch_size,
                                       "last" if last else "best", progress=_progress(quiet) and not as_json,
                                       output=output, overwrite=overwrite, state_dir=state_dir,
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
    written = Path(output) if output is not None else wdir / "eval.json"
    typer.echo(f"wrote {written}" + (f" and {written.parent / 'robustbench.json'}" if "AA" in result["columns"] else ""))


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
    output: Path = output_option(Path("MODEL_CARD.md"), "the Markdown file to write"),
    readme: bool = typer.Option(False, "--readme", help="also write each checkpoint's Hub README.md"),
    notes: Optional[Path] = typer.Option(None, "--notes", help="a Markdown file shown first, under 'Read this first' "
                                         "(the zoo's: zoo/NOTES.md)"),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Regenerate MODEL_CARD.md (and optionally per-checkpoint README.md cards) from run dirs."""
    from .card import CARD_TITLE, load_checkpoint_info, model_card, zoo_card
    from .io import atomic_write_text, check_replace

    check_replace(output, lambda p: CARD_TITLE in p.read_text(), "a model card written by againzoo", overwrite)
    try:
        text = notes.read_text() if notes is not None else None
    except OSError as e:
        raise ConfigError(f"--notes: cannot read {notes}: {e.strerror or e}") from None
    atomic_write_text(output, zoo_card(list(run_dirs), text))
    typer.echo(f"wrote {output}")
    if readme:
        for d in run_dirs:
            target = load_checkpoint_info(d)["dir"] / "README.md"
            atomic_write_text(target, model_card(d))
            typer.echo(f"wrote {target}")


def _eval_onnx(path: str, checkpoint: Optional[str], suite: str, data_dir: Optional[str], n_examples: int,
               queries: int, batch_size: int, output: Optional[Path], as_json: bool, quiet: bool,
               budget: Optional[dict], state_dir: Optional[Path]) -> None:
    require_extra("onnx", ("onnx", "onnxruntime"))
    from .onnx_eval import evaluate_onnx

    if budget and "n_queries" in budget:
        queries = budget["n_queries"]
    r = evaluate_onnx(path, checkpoint, suite, data_dir, n_examples, queries, batch_size, aa_budget=budget,
                      output=output, progress=_progress(quiet) and not as_json, state_dir=state_dir)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    lo, hi = r["worst_case_ci95"]
    typer.echo(f"{r['file']} ({r['precision']}), {r['data']['evaluated']}, eps={r['eps']:.5f}; transfer from "
               f"{r['source']} ({suite} suite) + Square-{r['square_queries']} on the file")
    for name, acc in r["columns"].items():
        typer.echo(f"  {name:<48}{100 * acc:>7.2f}")
    typer.echo(f"  {'worst case per example':<48}{100 * r['worst_case_acc']:>7.2f}  [{100 * lo:.2f}, {100 * hi:.2f}]")
    if r.get("source_record"):
        s = r["source_record"]
        typer.echo(f"  source checkpoint's own record ({s['suite']} suite, n={s['n']}): clean {100 * s['clean_acc']:.2f}, "
                   f"worst case {100 * s['worst_case_acc']:.2f}")
    typer.echo(f"wrote {r['written']}")


@app.command()
@user_errors
def export(
    source: str = typer.Argument(..., help="run directory (its best/), checkpoint dir or Hub repo id"),
    output: Path = output_option(..., "the .onnx file to write"),
    opset: int = typer.Option(18, "--opset"),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size"),
    with_softmax: bool = typer.Option(False, "--with-softmax", help="output probabilities instead of logits"),
    with_aux: bool = typer.Option(False, "--with-aux", help="also output the ASE head's logits"),
    data_dir: Optional[str] = data_dir_option("dataset folder for the real-image parity check"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (strict parity), fp16 (for GPUs) or int8 "
                                  "(static quantization for CPUs), each verified on test images"),
    n_examples: int = n_examples_option(1000, "test images a reduced precision is judged on"),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Export the inference path to ONNX and verify onnxruntime against PyTorch (fails on mismatch)."""
    require_extra("onnx", ("onnx", "onnxscript", "onnxruntime"))
    from .io import check_replace
    from .onnx import ParityError, export_checkpoint

    check_replace(output, lambda p: p.suffix == ".onnx", "an .onnx file", overwrite)
    try:
        report = export_checkpoint(source, output, opset, batch, with_softmax, with_aux, data_dir, precision, n_examples)
    except ParityError as e:
        typer.echo(f"PARITY FAILED: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {report['output']} ({report['precision']}, opset {report['opset']}, batch {report['batch']}, "
               f"outputs {report['outputs']})")
    if "precision_check" in report:
        c = report["precision_check"]
        typer.echo(f"  {report['precision']} vs PyTorch on {c['data']}: top-1 agreement {c['top1_agreement']:.4f}, "
                   f"clean {100 * c['clean_acc']:.2f}% (PyTorch {100 * c['torch_clean_acc']:.2f}%)")
    for name, r in report["sets"].items():
        gate = f", gate agreement {r['gate_agreement']:.4f}" if "gate_agreement" in r else ""
        typer.echo(f"  {name:<12} n={r['n']:<4} top-1 agreement {r['top1_agreement']:.4f}{gate}, "
                   f"max |logit diff| {r['max_abs_diff']:.2e}")


analyze_app = typer.Typer(no_args_is_help=True, help="Attribution-span analysis: PNG figures + analysis.json.")
app.add_typer(analyze_app, name="analyze")
OUT = output_option(Path("analysis"), "output folder (analysis.json is merged)")
OUT_OLD = deprecated_out_option()
DATA = data_dir_option()


@analyze_app.command("cam")
@user_errors
def analyze_cam(run: Path, n: int = n_examples_option(8, "number of images"), out: Path = OUT,
                data_dir: Optional[str] = DATA, out_old: Optional[Path] = OUT_OLD) -> None:
    """CAM maps (Eq. 1) of the main head and, for AGAIN models, the ASE head."""
    from .analysis import run_cam

    out = _renamed(out, out_old, "--out")
    r = run_cam(run, out, n, data_dir)
    typer.echo(f"{r['main_method']} at layer {r['layer']}; wrote {r['png']} and {out / 'analysis.json'}")


@analyze_app.command("asc")
@user_errors
def analyze_asc(run_a: Path, run_b: Path, n: int = n_examples_option(1000, "number of images"),
                lam: float = typer.Option(0.5, "--lambda", help="threshold of Eq. 2"), out: Path = OUT,
                data_dir: Optional[str] = DATA, out_old: Optional[Path] = OUT_OLD) -> None:
    """Attribution Span Coverage (Eq. 2) of two models; share of images where A's ASC is larger."""
    from .analysis import run_asc

    out = _renamed(out, out_old, "--out")
    r = run_asc(run_a, run_b, out, n, lam, data_dir)
    typer.echo(f"ASC (lambda={lam}) on {r['n']} images: mean A {r['mean_a']:.4f}, mean B {r['mean_b']:.4f}; "
               f"A > B on {100 * r['share_a_greater']:.2f}% of images; wrote {r['png']}")


@analyze_app.command("corruption")
@user_errors
def analyze_corruption(standard_run: Path, robust_run: Path, n: int = n_examples_option(1000, "number of images"),
                       lam: float = typer.Option(0.5, "--lambda", help="threshold of Eq. 2"),
                       eps: Optional[float] = typer.Option(None, "--eps"), out: Path = OUT,
                       data_dir: Optional[str] = DATA, out_old: Optional[Path] = OUT_OLD) -> None:
    """Table 1: accuracy on original/corrupted clean and adversarial data."""
    from .analysis import run_corruption

    out = _renamed(out, out_old, "--out")
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
def analyze_embedding(runs: List[Path], n: int = n_examples_option(500, "number of images"),
                      eps: Optional[float] = typer.Option(None, "--eps"), out: Path = OUT,
                      data_dir: Optional[str] = DATA, out_old: Optional[Path] = OUT_OLD) -> None:
    """Figure 4: t-SNE of penultimate features, clean and adversarial, with a compactness score."""
    from .analysis import run_embedding

    out = _renamed(out, out_old, "--out")
    r = run_embedding(list(runs), out, n, eps, data_dir)
    for name, v in r["runs"].items():
        typer.echo(f"{name}: compactness clean {v['compactness_clean']:.4f}, adversarial {v['compactness_adversarial']:.4f}")
    typer.echo(f"wrote {r['png']}")


@analyze_app.command("curves")
@user_errors
def analyze_curves(runs: List[Path], out: Path = OUT, out_old: Optional[Path] = OUT_OLD) -> None:
    """Figure 3: generalisation gaps from metrics.jsonl."""
    from .analysis import run_curves

    out = _renamed(out, out_old, "--out")
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
    ids: List[str] = typer.Argument(None, help="zoo entries to build (default: the gpu tier: resnet18_cifar "
                                    "again_resnet18)"),
    tier: Optional[str] = typer.Option(None, "--tier", help="build a tier's entries together: gpu (width-64 "
                                       "ResNet-18 pair) or cpu (width-16 pair trained in bf16 on the CPU, 60 min each)"),
    budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", help="size the epochs (or skip entries) "
                                                   "to finish inside this many minutes, from a measured throughput"),
    train_minutes: Optional[float] = typer.Option(None, "--train-minutes", help="size the epochs so that each "
                                                  "entry trains in at most this many minutes (a tier's default)"),
    data_dir: Optional[str] = data_dir_option(),
    device: str = DEVICE_OPTION,
    work_dir: Path = typer.Option(Path("runs/zoo"), "--work-dir", help="run directories and manifest.json"),
    zoo_dir: Path = typer.Option(Path("zoo"), "--zoo-dir", help="where zoo/<id>/ is written"),
    card: Path = typer.Option(Path("MODEL_CARD.md"), "--card"),
    set_: List[str] = typer.Option([], "--set", help="override a key of every recipe: --set epochs=2"),
    n_examples: int = n_examples_option(1000, "test images of each evaluation"),
    eval_batch_size: int = typer.Option(256, "--eval-batch-size", help="batch of the evaluation's attacks"),
    aa_budget: Optional[str] = typer.Option(None, "--aa-budget", help=AA_BUDGET_HELP),
    parts_dir: Optional[Path] = typer.Option(None, "--parts-dir", help="also write each finished entry as a tar "
                                             "in parts here (with the registry, card and manifest)"),
    split_mb: float = typer.Option(16, "--split-mb", help="largest part, MiB"),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Train, publish (fp16), evaluate the published weights, register and re-card the zoo's models.
    Called again after an interruption, it continues where it stopped."""
    from .zoo import build

    _cpu_job(device)
    m = build(ids or None, zoo_dir=zoo_dir, card=card, work_dir=work_dir, budget_minutes=budget_minutes,
              train_minutes=train_minutes, tier=tier,
              data_dir=data_dir, device=device, overrides=set_, n_examples=n_examples,
              eval_batch_size=eval_batch_size, parts_dir=parts_dir, split_mb=split_mb, progress=_progress(quiet),
              eval_kw=parse_aa_budget(aa_budget))
    for e in m["entries"]:
        if "skipped" in e or "refused" in e:
            typer.echo(f"{e['id']}: {'SKIPPED' if 'skipped' in e else 'REFUSED'} ({e.get('skipped') or e['refused']})")
        else:
            r, t = e["registry"]["metrics"], e["training"]
            typer.echo(f"{e['id']}: {t['epochs']} of {e['recipe_epochs']} epochs, trained {t['train_minutes']} min at "
                       f"{t['images_per_s']} img/s on {t['device']}" + (" (earlier)" if e.get("reused") else "")
                       + f", evaluated {e['eval_s']} s; clean {100 * r['clean']:.2f}, "
                       f"AA {100 * r.get('autoattack', float('nan')):.2f}, worst case {100 * r['worst_case']:.2f}")
            if "parts" in e:
                typer.echo(f"  packed into {len(e['parts'])} part(s) in {parts_dir}")
    typer.echo(f"wrote {work_dir / 'manifest.json'} and {card}")


@zoo_app.command("deployed")
@user_errors
def zoo_deployed(
    ids: List[str] = typer.Argument(..., help="published entries (the registry's names) to export and evaluate"),
    dataset: str = typer.Option("cifar10", "--dataset", help="the dataset of the published entries"),
    precision: List[str] = typer.Option(["fp32", "int8", "fp16"], "--precision", help="the precisions to measure"),
    data_dir: Optional[str] = data_dir_option(),
    zoo_dir: Path = typer.Option(Path("zoo"), "--zoo-dir", help="the folder of the zoo's entries"),
    card: Path = typer.Option(Path("MODEL_CARD.md"), "--card"),
    n_examples: int = n_examples_option(1000, "test images"),
    queries: int = typer.Option(5000, "--queries", help="Square queries against each file"),
    aa_budget: Optional[str] = typer.Option(None, "--aa-budget", help=AA_BUDGET_HELP),
    quiet: bool = QUIET_OPTION,
    state_dir: Optional[Path] = typer.Option(None, *VOCABULARY["state_dir"], help="keep each finished attack here "
                                             "(default: zoo/<id>/deployed_state/, one bit per image: commit it to "
                                             "continue in another session; removed once deployed.json is written)"),
) -> None:
    """Export published models at each precision and measure the robustness of the files (zoo/<id>/deployed.json).
    Called again after an interruption, it continues where it stopped."""
    require_extra("onnx", ("onnx", "onnxscript", "onnxruntime"))
    from .zoo import evaluate_deployed, folder_name, regenerate_card

    budget = parse_aa_budget(aa_budget).get("aa_budget")
    folders = {i: zoo_dir / folder_name(i, dataset) for i in ids}
    for i, folder in folders.items():
        if not (folder / "model.safetensors").exists():
            raise ConfigError(f"{folder} holds no published model (model.safetensors) for {i} on {dataset}")
    for i, folder in folders.items():
        out = evaluate_deployed(folder, tuple(precision), data_dir, n_examples,
                                (budget or {}).get("n_queries", queries), aa_budget=budget, progress=_progress(quiet),
                                state_dir=state_dir)
        for p, r in out["records"].items():
            typer.echo(f"{i} {p}: REFUSED ({r['refused']})" if "refused" in r else
                       f"{i} {p}: {r['file_mb']} MB, clean {100 * r['clean_acc']:.2f}, "
                       f"worst case {100 * r['worst_case_acc']:.2f}")
    regenerate_card(zoo_dir, card)
    typer.echo(f"wrote {', '.join(str(f / 'deployed.json') for f in folders.values())} and {card}")


@zoo_app.command("table")
@user_errors
def zoo_table(update: Optional[Path] = typer.Option(None, "--update", help="rewrite the table between the "
                                                    "<!-- models:begin/end --> markers of this file (README.md)")) -> None:
    """The published models as a Markdown table (the README's), from the registry and zoo/ records."""
    from .card import models_table, update_models_table

    if update is None:
        typer.echo(models_table())
        return
    typer.echo(f"{'updated' if update_models_table(update) else 'unchanged'}: {update}")


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
