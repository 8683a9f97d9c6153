"""Command-line conventions: --version, --json output, progress bars quiet in non-TTY logs."""

import json

from typer.testing import CliRunner

import againzoo
from againzoo.cli import app


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"againzoo {againzoo.__version__}"


def test_recipes_and_models_as_json():
    recipes = json.loads(CliRunner().invoke(app, ["recipes", "--json"]).output)
    assert "quickstart" in recipes and all(isinstance(v, str) for v in recipes.values())
    models = json.loads(CliRunner().invoke(app, ["models", "--json"]).output)
    assert "again_resnet18" in models


def test_eval_as_json_is_the_eval_record(tiny_runs):
    res = CliRunner().invoke(app, ["eval", str(tiny_runs["again"]), "-n", "8", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["suite"] == "quick" and result["data"]["n"] == 8 and 0 <= result["worst_case_acc"] <= 1


def test_progress_bars_stay_off_in_non_tty_logs(tmp_path):
    """A training run whose stderr is a file (a CI log) writes no carriage-return progress lines."""
    import subprocess
    import sys

    from .conftest import TINY_RUN

    cmd = [sys.executable, "-m", "againzoo", "train", "quickstart", "--set", f"output_dir={tmp_path}"]
    for o in [*TINY_RUN, "epochs=1"]:
        cmd += ["--set", o]
    with open(tmp_path / "log.txt", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=log, timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text and "run dir:" in text


def test_shell_completion_is_offered():
    out = CliRunner().invoke(app, ["--help"]).output
    assert "--install-completion" in out and "--show-completion" in out


def test_verbose_logs_run_progress_and_quiet_silences_it(tmp_path):
    from typer.testing import CliRunner

    from againzoo.cli import app

    tiny = ["--set", "model.kwargs.width=4", "--set", "epochs=1", "--set", "data.val_size=50", "--set", "eval.n_val=10",
            "--set", "eval.n_test=10", "--set", "eval.n_train=10", "--set", "attack.steps=1",
            "--set", "eval.attack_steps=1"]
    loud = CliRunner().invoke(app, ["-v", "train", "quickstart", "--set", f"output_dir={tmp_path / 'a'}", *tiny])
    assert loud.exit_code == 0, loud.output
    assert "INFO againzoo.training.trainer: training quickstart: 1 epochs" in loud.output
    assert "INFO againzoo.training.trainer: epoch 1/1: loss" in loud.output
    hushed = CliRunner().invoke(app, ["-q", "train", "quickstart", "--set", f"output_dir={tmp_path / 'b'}", *tiny])
    assert hushed.exit_code == 0 and "INFO" not in hushed.output
