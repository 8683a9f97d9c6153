"""The ``againzoo`` command line: a thin typer layer over the Python API.

User mistakes (:class:`~againzoo.errors.UserError`) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="AGAIN adversarial training, robustness evaluation and the againzoo model zoo.")


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    return wrapper


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

    run_dir = train_fn(recipe, resume=resume, device=device, data_dir=data_dir, overrides=set_, progress=not quiet)
    typer.echo(f"run dir: {run_dir}")


@app.command("recipes")
@user_errors
def list_recipes() -> None:
    """List the shipped recipes."""
    from .recipes import shipped

    items = shipped()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        typer.echo(f"{name:<{width}}  {desc}")


@app.command("models")
def list_models_cmd(pattern: str = typer.Argument("again_*")) -> None:
    """List the zoo's model names (again_<any timm model> works too)."""
    from .factory import list_models

    for name in list_models(pattern):
        typer.echo(name)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
