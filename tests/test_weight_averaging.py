"""Weight averaging (timm's ModelEmaV3 in the trainer) and label smoothing."""

import json

import pytest
import torch
import torch.nn.functional as F

from againzoo import recipes
from againzoo.runtime import accuracy
from againzoo.checkpoint import load_local
from againzoo.io import load_tensors, read_jsonl
from againzoo.training import train
from againzoo.training.methods import METHODS, StepContext, mart_loss, trades_loss
from againzoo.training.trainer import make_ema, make_model, make_optimizer, train_step

from .conftest import TINY_RUN


def _recipe(**ema):
    return recipes.parse({"name": "t", "model": {"kwargs": {"width": 4}, "again": {"enabled": True}},
                          "method": {"name": "standard"}, "ema": ema, "optimizer": {"lr": 0.5}})


def test_ema_after_k_steps_equals_the_hand_computed_average():
    decay, power, gamma = 0.9, 0.75, 2.0
    r = _recipe(decay=decay, warmup=True, warmup_power=power, warmup_gamma=gamma)
    torch.manual_seed(0)
    model = make_model(r, 10, {"pretrained_cfg_overlay": {"input_size": (3, 8, 8)}})
    opt = make_optimizer(r, model, torch.device("cpu"))
    ema = make_ema(r, model)
    ctx = StepContext(model, r.attack, True, 1.0, 0.0, __import__("contextlib").nullcontext)
    expected = None
    for t in range(1, 7):
        x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
        train_step(ctx, METHODS["standard"], opt, x, y, ema=ema, step=t)
        w = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # d_1 = 0 (a copy); then min(decay, 1 - (1 + (t - 1) / gamma) ** -power)
        d = 0.0 if t == 1 else min(decay, 1 - (1 + (t - 1) / gamma) ** -power)
        if expected is None:
            expected = w
        else:
            expected = {k: (d * expected[k] + (1 - d) * w[k]) if w[k].is_floating_point() else w[k] for k in w}
    got = ema.module.state_dict()
    assert set(got) == set(expected)
    # the average covers backbone, ASE head and the BN statistics
    assert any(k.startswith("ase.") for k in got) and any(k.endswith("running_mean") for k in got)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # and it is not simply the last weights
    assert not torch.allclose(got["ase.fc.weight"], model.state_dict()["ase.fc.weight"])


def test_constant_decay_without_warmup():
    r = _recipe(decay=0.5)
    torch.manual_seed(0)
    model = make_model(r, 10, {"pretrained_cfg_overlay": {"input_size": (3, 8, 8)}})
    ema = make_ema(r, model)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model, step=1)  # a copy
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=2)
    k = "ase.fc.weight"
    torch.testing.assert_close(ema.module.state_dict()[k], w0[k] + 0.5)


@pytest.mark.slow
def test_selection_and_saving_use_the_average(tmp_path, digits_test):
    run = train("quickstart", overrides=[f"output_dir={tmp_path}", *TINY_RUN, "ema.decay=0.8"], progress=False)
    state, _ = load_tensors(run / "state" / "state.safetensors")
    saved, _ = load_tensors(run / "model.safetensors")
    assert all(torch.equal(saved[k], state[f"ema.{k}"]) for k in saved)
    assert not all(torch.equal(saved[k], state[f"model.{k}"]) for k in saved if saved[k].is_floating_point())
    config = json.loads((run / "config.json").read_text())
    assert config["weights"]["kind"] == "ema" and config["weights"]["decay"] == 0.8
    rows = read_jsonl(run / "metrics.jsonl")
    assert all("raw_val_robust_acc" in r and "val_robust_acc" in r for r in rows)
    best = json.loads((run / "best" / "config.json").read_text())
    assert rows[best["epoch"]]["val_robust_acc"] == max(r["val_robust_acc"] for r in rows)
    # the plain columns describe the saved (averaged) weights, the raw_ columns the raw ones
    x, y = digits_test
    n = recipes.load("quickstart", TINY_RUN).eval.n_test
    assert rows[-1]["test_clean_acc"] == accuracy(load_local(run), x[:n], y[:n])


def test_label_smoothing_matches_the_hand_computed_loss():
    torch.manual_seed(0)
    logits, y, ls, k = torch.randn(6, 10), torch.randint(0, 10, (6,)), 0.2, 10
    logp = logits - torch.logsumexp(logits, 1, keepdim=True)
    q = torch.full((6, k), ls / k)
    q[torch.arange(6), y] += 1 - ls
    hand = float(-(q * logp).sum(1).mean())
    r = recipes.parse({"name": "t", "model": {"again": {"enabled": False}}, "method": {"label_smoothing": ls}})
    assert r.attack.label_smoothing == 0.0  # the attack's loss is not smoothed unless asked
    model = lambda x: logits  # noqa: E731 - the loss sees these logits for any input
    ctx = StepContext(model, r.attack, False, 0.0, 0.0, __import__("contextlib").nullcontext, ls)
    loss = METHODS["pgd_at"].loss(ctx, model, torch.zeros(6, 3, 4, 4), y, torch.zeros(6, 3, 4, 4))[0]
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    plain = float(F.cross_entropy(logits, y))
    assert abs(plain - hand) > 1e-3
    # TRADES: only the natural CE is smoothed, the KL term is not
    adv = logits + 0.3 * torch.randn_like(logits)
    kl = float(F.kl_div(F.log_softmax(adv, 1), F.softmax(logits, 1), reduction="none").sum(1).mean())
    assert float(trades_loss(logits, adv, y, 6.0, ls)) == pytest.approx(hand + 6.0 * kl, rel=1e-5)
    # MART: smoothing moves only its CE part
    assert float(mart_loss(logits, adv, y, 6.0, ls) - mart_loss(logits, adv, y, 6.0)) == pytest.approx(
        float(F.cross_entropy(adv, y, label_smoothing=ls) - F.cross_entropy(adv, y)), rel=1e-5)


@pytest.mark.parametrize("name", ["cifar10_resnet18_pgd_at_wa", "cifar10_resnet18_again_pgd_at_wa",
                                  "cifar10_resnet18_pgd_at_zoo", "cifar10_resnet18_again_pgd_at_zoo"])
def test_weight_averaging_recipes(name):
    r = recipes.load(name)
    assert r.ema is not None and r.method.label_smoothing > 0 and r.attack.label_smoothing == 0
    assert r.model.again.enabled == ("again" in name)
    if name.endswith("_wa"):  # the FastAT Benchmark protocol
        assert (r.epochs, r.batch_size, r.lr_schedule.name, r.ema.decay) == (100, 128, "onecycle", 0.9995)


def test_zoo_recipes_differ_only_in_again():
    a, b = (recipes.load(n).to_dict() for n in ("cifar10_resnet18_pgd_at_zoo", "cifar10_resnet18_again_pgd_at_zoo"))
    for d in (a, b):
        d.pop("name"), d.pop("description"), d["model"].pop("again")
    assert a == b
    # the description carries the budget arithmetic: epochs x 50,000 x passes / img/s
    r = recipes.load("cifar10_resnet18_again_pgd_at_zoo")
    assert f"{r.epochs} x 50,000" in r.description and "img/s" in r.description
