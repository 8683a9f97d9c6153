"""Command-line conventions: --version, --json output, progress bars quiet in non-TTY logs."""

import json

import pytest

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


def test_eval_as_json_is_the_eval_record(tiny_runs, tmp_path):
    # the aa suite with a reduced budget: the cheapest suite, since this is about --json, not the attacks
    res = CliRunner().invoke(app, ["eval", str(tiny_runs["again"]), "-n", "8", "--json", "--suite", "aa",
                                   "--aa-budget", "2,2,5", "-o", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["suite"] == "aa" and result["data"]["n"] == 8 and 0 <= result["worst_case_acc"] <= 1
    assert json.loads((tmp_path / "eval.json").read_text()) == result


@pytest.mark.slow
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


def _all_options():
    """(command path, click option) for every option of every command and sub-command."""
    import typer

    def walk(cmd, path):
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option":
                yield path, p
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    yield from walk(typer.main.get_command(app), "againzoo")


def test_one_vocabulary_across_commands():
    """The same idea is spelled the same way everywhere: a flag that names an idea of the vocabulary
    carries exactly the vocabulary's spellings, and a long flag used by several commands has the same
    short form in all of them."""
    from againzoo.cli import DEPRECATED, VOCABULARY

    flag_idea = {f: idea for idea, flags in VOCABULARY.items() for f in flags}
    seen: dict[str, tuple[str, set]] = {}
    checked = 0
    for path, opt in _all_options():
        flags = set(opt.opts) | set(opt.secondary_opts)
        if opt.hidden:
            assert flags <= set(DEPRECATED), f"{path}: hidden option {flags} is not a known deprecated spelling"
            continue
        assert not flags & set(DEPRECATED), f"{path}: {flags} uses a deprecated spelling"
        for f in flags:
            if f in flag_idea:
                checked += 1
                assert flags == set(VOCABULARY[flag_idea[f]]), f"{path}: {sorted(flags)} vs {VOCABULARY[flag_idea[f]]}"
        for f in (f for f in flags if f.startswith("--")):
            if f in seen and f != "--help":
                assert seen[f][1] == flags, f"{path} spells {f} as {sorted(flags)}, {seen[f][0]} as {sorted(seen[f][1])}"
            seen.setdefault(f, (path, flags))
    assert checked >= 20  # the walk reached the commands


def test_the_vocabulary_check_sees_a_difference():
    """A command spelling the output option differently would be caught (the check is not vacuous)."""
    from againzoo.cli import VOCABULARY

    assert {"--out", "-o"} != set(VOCABULARY["output"]) and {"-n"} != set(VOCABULARY["n_examples"])


def test_deprecated_out_still_works_with_a_note(tiny_runs, tmp_path):
    res = CliRunner().invoke(app, ["analyze", "curves", str(tiny_runs["again"]), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "--out is deprecated" in res.output and (tmp_path / "a" / "analysis.json").exists()
    res = CliRunner().invoke(app, ["analyze", "curves", str(tiny_runs["again"]), "--output", str(tmp_path / "b")])
    assert res.exit_code == 0 and "is deprecated" not in res.output and (tmp_path / "b" / "analysis.json").exists()


def test_train_output_names_the_folder_runs_go_into(tmp_path):
    tiny = ["model.kwargs.width=4", "epochs=1", "data.val_size=50", "eval.n_val=10", "eval.n_test=10",
            "eval.n_train=10", "attack.steps=1", "eval.attack_steps=1", "log_every=1000"]
    sets = [a for kv in tiny for a in ("--set", kv)]
    res = CliRunner().invoke(app, ["train", "quickstart", "-o", str(tmp_path / "exp"), "-q", *sets])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exp" / "quickstart" / "config.json").exists()
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "exp" / "quickstart"), "-o", str(tmp_path)])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "give one" in res.output
