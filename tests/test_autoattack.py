"""The AA column is the official AutoAttack (pyautoattack); RobustBench records."""

import json

import pytest
import torch
from typer.testing import CliRunner

from againzoo.attacks import apgd
from againzoo.attacks.adaptive import objective
from againzoo.autoattack import run_autoattack
from againzoo.cli import app
from againzoo.evaluation import evaluate, evaluate_checkpoint
from againzoo.checkpoint import load_local
from againzoo.robustbench import FIELDS

EPS = 32 / 255  # the tiny digits models' training budget: robust accuracy lands mid-range
BUDGET = {"n_iter": 10, "n_targets": 2, "n_queries": 20}


def test_aa_column_is_the_per_example_minimum_of_the_official_hard_and_straight_through_runs(tiny_runs):
    result, wdir = evaluate_checkpoint(str(tiny_runs["again"]), "aa", n_examples=24, progress=False, aa_budget=BUDGET)
    assert set(result["attacks"]) == {"AA [hard]", "AA [st]"} and list(result["columns"]) == ["Clean", "AA"]
    model = load_local(wdir)
    from againzoo.evaluation import eval_data

    x, y, _ = eval_data(json.loads((wdir / "config.json").read_text()), n=24)
    hard = run_autoattack(model, x, y, EPS, gate="hard", batch_size=256, budget=BUDGET)
    st = run_autoattack(model, x, y, EPS, gate="straight_through", batch_size=256, budget=BUDGET)
    assert result["columns"]["AA"] == int((hard.robust & st.robust).sum()) / 24
    assert result["columns"]["AA"] <= min(hard.acc, st.acc)
    aa = result["autoattack"]
    import pyautoattack

    assert aa["package"] == "pyautoattack" and aa["version"] == pyautoattack.__version__
    assert aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and aa["budget"] == BUDGET
    assert aa["runs"]["hard"]["acc"] == pytest.approx(hard.acc) and aa["runs"]["straight_through"]["acc"] == pytest.approx(st.acc)
    assert set(aa["runs"]["hard"]["after_attack"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    # the package's own checks are recorded as flags, for both runs
    checks = {f["check"] for f in result["flags"]}
    assert {"autoattack_randomized", "autoattack_dynamic", "autoattack_within_eps"} <= checks
    assert all(f["passed"] for f in result["flags"] if f["check"] == "autoattack_within_eps")
    # the aa suite is RobustBench's protocol only: no soundness-check attacks of ours
    assert result["checks"] == {}

    rb = json.loads((wdir / "robustbench.json").read_text())
    assert set(FIELDS) <= set(rb)
    assert rb["autoattack_acc"] == f"{100 * result['columns']['AA']:.2f}" == rb["reported"]
    assert rb["clean_acc"] == f"{100 * result['clean_acc']:.2f}" and rb["eps"] == "32/255"
    assert rb["additional_data"] is False and rb["number_forward_passes"] == 1
    assert "Reduced AutoAttack budget" in rb["footnote"]


def test_plain_model_gets_one_official_run(tiny_runs, digits_test):
    model = load_local(tiny_runs["plain"])
    r = evaluate(model, digits_test[0][:16], digits_test[1][:16], suite="aa", eps=EPS, progress=False,
                 checks=False, aa_budget=BUDGET)
    assert list(r["attacks"]) == ["AA"] and list(r["autoattack"]["runs"]) == ["hard"]
    assert r["worst_case_acc"] == r["columns"]["AA"] == r["attacks"]["AA"]["acc"]


@pytest.mark.slow
def test_our_apgd_ce_agrees_with_the_official_apgd_ce(tiny_runs, digits_test):
    from pyautoattack.autopgd_base import APGDAttack

    model = load_local(tiny_runs["plain"])
    x, y = digits_test
    x = x.contiguous()
    acc = lambda xa: float((model(xa).argmax(1) == y).float().mean())  # noqa: E731
    with torch.no_grad():
        ours = acc(apgd(objective(model, y, "ce", "standard"), x, y, EPS, 100, generator=torch.Generator().manual_seed(0)))
        official = acc(APGDAttack(model, n_iter=100, norm="Linf", n_restarts=1, eps=EPS, seed=0, loss="ce",
                                  device="cpu").perturb(x, y))
    assert 0.1 < official < 0.9  # a model where the attacks have something to disagree about
    assert abs(ours - official) <= 0.01, (ours, official)


def test_eval_cli_aa_suite_prints_the_official_runs(tiny_runs, monkeypatch):
    import againzoo.autoattack as AA

    real = AA.make_adversary
    monkeypatch.setattr(AA, "make_adversary", lambda *a, **k: real(*a[:5], budget=BUDGET))
    res = CliRunner().invoke(app, ["eval", str(tiny_runs["again"]), "--suite", "aa", "-n", "12", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "| Clean | AA | Worst case |" in res.output and "official pyautoattack" in res.output
    assert "hard gate" in res.output and "straight_through gate" in res.output and "robustbench.json" in res.output


@pytest.mark.slow  # a fresh interpreter (~10 s of imports)
def test_the_training_engine_never_imports_pyautoattack():
    import subprocess
    import sys

    code = ("import sys, againzoo.training, againzoo.evaluation, againzoo.cli; "
            "print('pyautoattack' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
