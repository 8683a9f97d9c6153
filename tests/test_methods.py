import contextlib
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from againzoo.recipes import AttackSection
from againzoo.training.awp import AWP
from againzoo.training.methods import METHODS, StepContext, mart_loss, trades_loss

from .conftest import tiny


def ctx_for(model, again, beta=6.0, steps=2):
    attack = AttackSection(eps=8 / 255, step_size=2 / 255, steps=steps)
    return StepContext(model, attack, again, 1.0, beta, contextlib.nullcontext)


def plain():
    return timm.create_model("resnet18_cifar", width=8)


# AWP combines with pgd_at, trades and mart (the recipe schema refuses the rest)
COMBOS = [(n, awp) for n in METHODS for awp in (False, True) if not (awp and n in ("standard", "fgsm_rs", "n_fgsm"))]


@pytest.mark.parametrize("name, use_awp", COMBOS)
@pytest.mark.parametrize("with_again", [False, True])
def test_every_method_runs_two_steps(name, with_again, use_awp):
    model = tiny() if with_again else plain()
    method = METHODS[name]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    awp = AWP(model, tiny() if with_again else plain(), gamma=0.01, proxy_lr=0.01) if use_awp else None
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        ctx = ctx_for(model, again=with_again)
        x_adv = method.craft(ctx, x, y)
        if name == "standard":
            assert x_adv is None
        else:
            bound = 3 * 8 / 255 if name == "n_fgsm" else 8 / 255  # N-FGSM: noise 2 eps + a step of eps, unprojected
            assert (x_adv - x).abs().max() <= bound + 1e-6 and not torch.equal(x_adv, x)
        diff = awp.perturbation(ctx, method, x, y, x_adv) if awp else None
        if diff:
            awp.apply(diff, 1.0)
        model.train()
        loss, logits, _ = method.loss(ctx, model, x, y, x_adv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if diff:
            awp.apply(diff, -1.0)
        assert torch.isfinite(loss) and logits.shape == (8, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if with_again:
        assert model.ase.fc.weight.grad is not None and model.ase.fc.weight.grad.abs().sum() > 0


def test_trades_loss_by_hand():
    nat = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    adv = torch.tensor([[1.0, 1.0, 0.0], [0.5, -0.2, 0.1]])
    y = torch.tensor([0, 2])
    total = 0.0
    for i in range(2):
        p = [math.exp(v) / sum(math.exp(u) for u in nat[i].tolist()) for v in nat[i].tolist()]
        q = [math.exp(v) / sum(math.exp(u) for u in adv[i].tolist()) for v in adv[i].tolist()]
        ce = -math.log(p[int(y[i])])
        kl = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
        total += (ce + 6.0 * kl) / 2
    assert trades_loss(nat, adv, y, 6.0).item() == pytest.approx(total, rel=1e-5)


def test_mart_loss_by_hand():
    nat = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    adv = torch.tensor([[1.0, 1.5, 0.0], [0.5, -0.2, 0.1]])
    y = torch.tensor([0, 2])
    beta, total = 5.0, 0.0
    for i in range(2):
        p = [math.exp(v) / sum(math.exp(u) for u in nat[i].tolist()) for v in nat[i].tolist()]
        q = [math.exp(v) / sum(math.exp(u) for u in adv[i].tolist()) for v in adv[i].tolist()]
        yi = int(y[i])
        best_other = max((k for k in range(3) if k != yi), key=lambda k: q[k])
        bce = -math.log(q[yi]) - math.log(1.0001 - q[best_other] + 1e-12)
        kl = sum(pk * math.log((pk) / (qk + 1e-12)) for pk, qk in zip(p, q))
        total += (bce + beta * kl * (1.0000001 - p[yi])) / 2
    assert mart_loss(nat, adv, y, beta).item() == pytest.approx(total, rel=1e-4)


def test_awp_perturbation_by_hand():
    torch.manual_seed(0)
    model, proxy = torch.nn.Sequential(torch.nn.Linear(4, 3)), torch.nn.Sequential(torch.nn.Linear(4, 3))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    ctx = StepContext(model, AttackSection(), False, 0.0, 0.0, contextlib.nullcontext)
    awp = AWP(model, proxy, gamma=0.01, proxy_lr=0.1)
    diff = awp.perturbation(ctx, METHODS["pgd_at"], x, y, x)
    assert set(diff) == {"0.weight"}  # weights only, not biases
    w = model[0].weight.detach()
    g = torch.autograd.grad(F.cross_entropy(model(x), y), model[0].weight)[0]
    # one ascent step on the proxy: d = lr * grad; perturbation = gamma * ||w|| * d / ||d||
    expected = 0.01 * w.norm() * g / g.norm()
    torch.testing.assert_close(diff["0.weight"], expected, rtol=1e-4, atol=1e-7)
    before = w.clone()
    awp.apply(diff, 1.0)
    awp.apply(diff, -1.0)
    torch.testing.assert_close(model[0].weight.detach(), before)


def test_again_attack_uses_joint_loss_in_eval_bn():
    model = tiny()
    model.train()
    ctx = ctx_for(model, again=True)
    seen = []
    orig = model.forward

    def spy(x, targets=None, return_aux=False, again=True):
        seen.append((model.training, return_aux, again))
        return orig(x, targets=targets, return_aux=return_aux, again=again)

    model.forward = spy
    METHODS["pgd_at"].craft(ctx, torch.rand(4, 3, 16, 16), torch.arange(4))
    assert seen and all(s == (False, True, True) for s in seen)  # eval-mode BN/gate, aux logits used
    assert model.training  # restored
