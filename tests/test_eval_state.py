"""A resumable evaluation (againzoo.eval_state): an interrupted paper suite continues where it stopped,
recomputes nothing finished, and gives exactly the result of an uninterrupted run."""

import pytest
import torch

from againzoo import autoattack as AA
from againzoo import evaluation
from againzoo.checkpoint import load_local
from againzoo.evaluation import evaluate
from againzoo.autoattack import AutoAttackRun, merge

KW = dict(suite="paper", eps=32 / 255, progress=False, batch_size=16, n_check=16, pgd_steps=(2, 3), cw_steps=2,
          aa_budget={"n_iter": 5, "n_targets": 2, "n_queries": 20})


def _comparable(r):
    """The result without what legitimately differs between two runs (wall-clock seconds)."""
    attacks = {k: {**a, "settings": {s: v for s, v in a["settings"].items() if s != "seconds"}}
               for k, a in r["attacks"].items()}
    aa = {**r["autoattack"], "runs": {g: {**v, "seconds": 0} for g, v in r["autoattack"]["runs"].items()}}
    return {**r, "attacks": attacks, "autoattack": aa, "runtime": None}


def _dies_on_call(n, real):
    """``real`` until its ``n``-th call, which "dies" (KeyboardInterrupt) as a kill -9 would."""
    calls = []

    def run(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)
    return run


@pytest.fixture(scope="module")
def setting(tiny_runs, digits_test):
    model = load_local(tiny_runs["again"])
    x, y = digits_test[0][:40], digits_test[1][:40]
    return model, x, y, _comparable(evaluate(model, x, y, **KW))


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(setting, tmp_path, monkeypatch):
    model, x, y, uninterrupted = setting
    real = AA.run_autoattack
    monkeypatch.setattr(AA, "run_autoattack", _dies_on_call(3, real))  # kill -9 in the first AutoAttack run
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, state_dir=tmp_path, **KW)
    (folder,) = tmp_path.iterdir()
    done = sorted(p.name for p in folder.iterdir())
    assert len([d for d in done if "AA" in d]) == 2 and any("PGD-2" in d for d in done)  # what finished is kept
    assert not any(d.startswith("checks") for d in done)
    monkeypatch.setattr(AA, "run_autoattack", real)

    white = []
    real_batched = evaluation._batched_attack
    monkeypatch.setattr(evaluation, "_batched_attack", lambda m, spec, *a: white.append(spec.name) or real_batched(m, spec, *a))
    aa_calls = []
    monkeypatch.setattr(AA, "run_autoattack", lambda *a, **k: aa_calls.append(1) or real(*a, **k))
    resumed = evaluate(model, x, y, state_dir=tmp_path, **KW)
    # nothing finished is recomputed: of the suite's white-box attacks none ran again (the ones left are the
    # soundness checks'), of the two AutoAttack runs (3 slices of 16 each) only the 4 missing slices ran
    assert not any(name in white for name in resumed["attacks"])
    assert len(aa_calls) == 2 * 3 - 2
    assert _comparable(resumed) == uninterrupted
    # the record says how much earlier calls did, and what the evaluation cost over all calls
    cost = resumed["runtime"]
    assert cost["units_reused"] == len(done) and cost["units_computed"] == len(list(folder.iterdir())) - len(done)
    assert cost["seconds_all_calls"] >= cost["seconds"]

    # a third call computes nothing at all and still gives the same record, and the cost of all calls
    white.clear(), aa_calls.clear()
    again = evaluate(model, x, y, state_dir=tmp_path, **KW)
    assert white == [] and aa_calls == [] and _comparable(again) == uninterrupted
    assert again["runtime"]["units_computed"] == 0 and again["runtime"]["units_reused"] == len(list(folder.iterdir()))
    assert again["runtime"]["seconds_all_calls"] >= cost["seconds_all_calls"] - cost["seconds"]


def test_a_state_from_before_units_recorded_their_seconds_claims_no_total(tmp_path):
    """Units written without their seconds (an older state) are reused, but the record then gives no
    total over all calls rather than an understated one."""
    from againzoo.eval_state import EvalState
    from againzoo.io import save_tensors

    old = EvalState(tmp_path, "f" * 16)
    save_tensors(old._path("a"), {"ok": torch.ones(3, dtype=torch.bool)}, {"againzoo.eval_unit": "{}"})
    state = EvalState(tmp_path, "f" * 16)
    state.unit("a", lambda: pytest.fail("a finished unit is computed again"))
    state.unit("b", lambda: ({"ok": torch.zeros(3, dtype=torch.bool)}, {}))
    assert state.cost(5.0) == {"units_computed": 1, "units_reused": 1}
    fresh = EvalState(tmp_path, "f" * 16)
    fresh.unit("b", lambda: pytest.fail("a finished unit is computed again"))
    assert fresh.cost(1.0)["seconds_all_calls"] >= 1.0 and fresh.cost(1.0)["units_reused"] == 1


def test_a_plain_model_s_state_is_per_example_results_only_and_resumes_to_the_same_record(tiny_runs, digits_test,
                                                                                            tmp_path, monkeypatch):
    """Without a gate nothing reads the adversarial images, so its units keep none: a state small
    enough to travel with the published weights between sessions (againzoo zoo build)."""
    from againzoo.io import load_tensors

    model = load_local(tiny_runs["plain"])
    x, y = digits_test[0][:40], digits_test[1][:40]
    uninterrupted = _comparable(evaluate(model, x, y, **KW))
    real = AA.run_autoattack
    monkeypatch.setattr(AA, "run_autoattack", _dies_on_call(2, real))
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, state_dir=tmp_path, **KW)
    monkeypatch.setattr(AA, "run_autoattack", real)
    (folder,) = tmp_path.iterdir()
    units = sorted(folder.iterdir())
    assert any("AA" in u.name for u in units) and any("PGD" in u.name for u in units)
    for u in units:
        tensors, _ = load_tensors(u)
        assert all(t.dtype == torch.bool and t.dim() == 1 for t in tensors.values()), u.name
    assert sum(u.stat().st_size for u in units) < 4096 * len(units)
    assert _comparable(evaluate(model, x, y, state_dir=tmp_path, **KW)) == uninterrupted


def test_state_of_another_setting_or_model_is_never_reused(setting, tmp_path):
    model, x, y, _ = setting
    quick = {**KW, "suite": "quick", "aa_iter": 3, "n_targets": 2, "aa_budget": None, "checks": False}
    evaluate(model, x[:16], y[:16], state_dir=tmp_path, **quick)
    evaluate(model, x[:16], y[:16], state_dir=tmp_path, **{**quick, "seed": 1})
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    try:
        evaluate(model, x[:16], y[:16], state_dir=tmp_path, **quick)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1e-3)
    assert len(list(tmp_path.iterdir())) == 3  # a seed and a weight each make their own state


def test_merged_autoattack_runs_weight_each_slice_by_its_size():
    x = torch.zeros(4, 1, 2, 2)
    a = AutoAttackRun("hard", torch.tensor([True, True, False]), x[:3], {"apgd-ce": 2 / 3, "apgd-t": 2 / 3},
                      {"zero_gradients": "msg a"}, 1.0, 0.01)
    b = AutoAttackRun("hard", torch.tensor([False]), x[3:], {"apgd-ce": 0.0}, {}, 2.0, 0.03)  # nothing left after APGD-CE
    m = merge([a, b])
    assert m.robust.tolist() == [True, True, False, False] and m.acc == 0.5
    assert m.after_attack == {"apgd-ce": 0.5, "apgd-t": 0.5}
    assert m.warnings == {"zero_gradients": "msg a"} and m.seconds == 3.0 and m.max_perturbation == 0.03
