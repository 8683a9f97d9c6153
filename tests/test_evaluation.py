import contextlib
import json

import numpy as np
import pytest
import timm
import torch
from torch import nn
from typer.testing import CliRunner

from againzoo.cli import app
from againzoo.evaluation import evaluate, markdown_table, suite_specs
from againzoo.runtime import accuracy
from againzoo.checkpoint import load_local

from .conftest import LOSSLESS


class QuantizedInput(nn.Module):
    """A deliberately gradient-masked toy: inputs are rounded to a 4/255 grid before the classifier,
    so the input gradient is exactly zero. ``gate_mode("straight_through")`` turns the rounding into
    the identity on the backward pass (BPDA), which is what an adaptive attacker does."""

    def __init__(self, inner: nn.Module, step: float = 4 / 255):
        super().__init__()
        self.inner, self.step, self.straight_through = inner, step, False
        self.num_classes = inner.num_classes

    @contextlib.contextmanager
    def gate_mode(self, gate):
        self.straight_through = gate == "straight_through"
        try:
            yield
        finally:
            self.straight_through = False

    def forward(self, x):
        q = torch.round(x / self.step) * self.step
        if self.straight_through:
            q = x + (q - x).detach()
        return self.inner(q)


@pytest.fixture(scope="module")
def undefended(real_images):
    """A slim ResNet-18 trained briefly (no attack) on real CIFAR-10 training images."""
    d = np.load(LOSSLESS)
    x = torch.from_numpy(d["x_train"][:2000]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(d["y_train"][:2000])
    torch.manual_seed(0)
    m = timm.create_model("resnet18_cifar", width=8)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(4):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 100):
            idx = perm[i:i + 100]
            loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def test_pgd_breaks_an_undefended_model_on_real_images(undefended, real_images):
    x, y = real_images[0][:200], real_images[1][:200]
    assert accuracy(undefended, x, y) > 0.25  # it learned something (chance: 0.1)
    assert accuracy(undefended, x, y, eps=8 / 255, steps=10) <= 0.02


@pytest.mark.slow
def test_masked_toy_is_flagged_and_broken_by_the_adaptive_suite(undefended, real_images):
    x, y = real_images[0][:96], real_images[1][:96]
    toy = QuantizedInput(undefended).eval()
    r = evaluate(toy, x, y, suite="quick", eps=8 / 255, progress=False, n_check=64, aa_iter=20, n_targets=3)
    clean = r["clean_acc"]
    assert r["non_adaptive_acc"] > 0.6 * clean  # non-adaptive attacks see (false) robustness
    assert r["worst_case_acc"] < 0.25 * clean  # the straight-through (BPDA) variants bring it down
    failed = {f["check"] for f in r["flags"] if not f["passed"]}
    assert {"no_zero_gradients", "whitebox_beats_square", "adaptive_gap"} <= failed
    assert r["masking_suspected"]
    # the same suite on the undefended model itself raises none of the masking flags
    r2 = evaluate(undefended, x, y, suite="quick", eps=8 / 255, progress=False, n_check=64, aa_iter=20, n_targets=3)
    assert not r2["masking_suspected"], [f for f in r2["flags"] if not f["passed"]]


def test_official_autoattack_with_straight_through_gate_finds_what_the_hard_gate_misses(undefended, real_images):
    x, y = real_images[0][:96], real_images[1][:96]
    toy = QuantizedInput(undefended).eval()
    r = evaluate(toy, x, y, suite="aa", eps=8 / 255, progress=False, checks=False,
                 aa_budget={"n_iter": 10, "n_targets": 2, "n_queries": 1})  # Square, which needs no gradient, kept short
    assert set(r["attacks"]) == {"AA [hard]", "AA [st]"}
    hard, st = r["autoattack"]["runs"]["hard"]["acc"], r["autoattack"]["runs"]["straight_through"]["acc"]
    assert hard > 0.5 * r["clean_acc"]  # gradient-based attacks see zero gradients through the rounding...
    assert st < 0.5 * hard  # ...the straight-through gate (BPDA) does not
    assert r["columns"]["AA"] == r["worst_case_acc"] <= st
    assert r["adaptive_gap"] == pytest.approx(hard - r["worst_case_acc"])
    failed = {f["check"] for f in r["flags"] if not f["passed"]}
    assert "adaptive_gap" in failed and r["masking_suspected"]


def test_again_model_adaptive_variants_and_gap(tiny_runs, digits_test):
    model = load_local(tiny_runs["again"])
    x, y = digits_test[0][:64], digits_test[1][:64]
    names = [s.name for s in suite_specs("full", model)]
    assert "PGD-20 [standard]" in names and "PGD-20 [joint]" in names and "PGD-20 [st]" in names
    assert "gate [gate]" in names and names[-2:] == ["AA [hard]", "AA [st]"]
    assert "APGD-CE [joint]" in names and "APGD-CE [standard]" not in names  # our APGD: adaptive objectives only
    r = evaluate(model, x, y, suite="quick", eps=32 / 255, progress=False, checks=False, aa_iter=10, n_targets=2)
    assert set(r["attacks"]) == {"APGD-CE [standard]", "APGD-CE [joint]", "APGD-CE [st]", "APGD-T [standard]",
                                 "APGD-T [joint]", "APGD-T [st]", "gate [gate]", "official APGD [hard]",
                                 "official APGD [st]"}
    assert r["autoattack"]["attacks"] == ["apgd-ce", "apgd-t"] and not r["autoattack"]["complete"]
    assert r["autoattack"]["budget"] == {"n_iter": 10, "n_targets": 2}  # the quick suite's own budgets
    assert r["adaptive_gap"] == pytest.approx(r["non_adaptive_acc"] - r["worst_case_acc"])
    assert r["adaptive_gap"] >= 0


def test_worst_case_never_above_any_single_attack(tiny_runs, digits_test):
    model = load_local(tiny_runs["again"])
    x, y = digits_test[0][:48], digits_test[1][:48]
    r = evaluate(model, x, y, suite="paper", eps=32 / 255, progress=False, checks=False, pgd_steps=(2, 4), cw_steps=3,
                 aa_budget={"n_iter": 5, "n_targets": 2, "n_queries": 20})
    for name, a in r["attacks"].items():
        assert r["worst_case_acc"] <= a["acc"] + 1e-12, name
        assert r["columns"][a["column"]] <= a["acc"] + 1e-12, name
    assert r["worst_case_acc"] <= min(r["columns"].values())
    assert r["columns"]["Clean"] == r["clean_acc"] >= r["worst_case_acc"]
    assert r["autoattack"]["package"] == "pyautoattack" and r["autoattack"]["attacks"] == ["apgd-ce", "apgd-t",
                                                                                             "fab-t", "square"]
    table = markdown_table(r)
    assert "| Clean | PGD-2 | PGD-4 | C&W | non-adaptive | AA |" in table and "Worst case" in table


def test_eval_cli_writes_eval_json(tiny_runs):
    res = CliRunner().invoke(app, ["eval", str(tiny_runs["again"]), "--suite", "quick", "-n", "24", "--quiet",
                                   "--aa-budget", "10,2,5"])
    assert res.exit_code == 0, res.output
    assert "| Clean | APGD | gate | official APGD | Worst case |" in res.output
    out = json.loads((tiny_runs["again"] / "best" / "eval.json").read_text())
    for key in ("data", "eps", "suite", "attacks", "worst_case_acc", "clean_acc", "flags", "reference", "columns"):
        assert key in out
    assert out["data"]["name"] == "digits" and out["data"]["n"] == 24 and out["data"]["lossless"] is True
    assert out["eps"] == pytest.approx(32 / 255)  # the training recipe's budget by default
    assert all({"check", "passed", "detail"} <= set(f) for f in out["flags"])
    assert out["reference"] is None  # the paper has no digits row
    assert out["checks"]["square_queries"] == 5  # the reduced budget's queries cap the checks' Square
    bad = CliRunner().invoke(app, ["eval", str(tiny_runs["again"]), "--suite", "nope"])
    assert bad.exit_code == 2 and "unknown suite 'nope'" in bad.output
