"""The training step and the attack loops make no host syncs (what would stall a GPU), counted on the
CPU by againzoo.host_sync."""

import pytest
import torch

from .conftest import tiny

from againzoo import recipes
from againzoo.attacks import adaptive as A
from againzoo.attacks.apgd import apgd, apgd_targeted
from againzoo.attacks.pgd import pgd
from againzoo.host_sync import HostSyncs
from againzoo.training.awp import AWP
from againzoo.training.methods import METHODS, StepContext
from againzoo.training.trainer import device_setup, make_ema, make_model, make_optimizer, train_step


def test_the_counter_sees_syncs_and_only_syncs():
    x = torch.randn(16)
    mask = x > 0
    with HostSyncs() as s:
        float(x.sum())
        x[mask]
        x[mask] = 0.0
        x.nonzero()
        if mask.any():
            pass
    assert dict(s.by_op) == {"_local_scalar_dense": 2, "index": 1, "index_put_": 1, "nonzero": 1}
    with HostSyncs() as s:
        torch.where(mask, x, 0.0).argmax()
        x[torch.arange(3)] = 1.0  # an integer index has a known shape
        x.sort()
    assert s.total == 0


CASES = [("pgd_at", "label", False), ("pgd_at", "pred", True), ("pgd_at", "soft", False), ("trades", "label", True),
         ("mart", "pred", False), ("fgsm_rs", "label", False)]


@pytest.mark.parametrize("method,source,awp", CASES)
def test_a_training_step_makes_no_host_sync(method, source, awp):
    r = recipes.parse({"name": "s", "model": {"kwargs": {"width": 4}, "again": {
        "enabled": True, "gate_source": source, "alpha": 0.6 if source == "label" else 1.0}},
        "method": {"name": method, **({"awp": {}} if awp else {})}, "attack": {"steps": 2}, "batch_size": 8,
        "ema": {"decay": 0.99}})
    args, dev = {"pretrained_cfg_overlay": {"input_size": (3, 16, 16)}}, torch.device("cpu")
    model = make_model(r, 10, args)
    opt = make_optimizer(r, model, dev)
    w = AWP(model, make_model(r, 10, args), r.method.awp.gamma, r.method.awp.proxy_lr) if awp else None
    ema = make_ema(r, model)
    ctx = StepContext(model, r.attack, True, 1.0, 6.0, device_setup(r, dev).autocast)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    train_step(ctx, METHODS[method], opt, x, y, w, ema, 1)
    with HostSyncs() as s:
        train_step(ctx, METHODS[method], opt, x, y, w, ema, 2)
    assert s.total == 0, dict(s.by_op)


def _syncs(fn) -> int:
    with HostSyncs() as s:
        fn()
    return s.total


def test_attack_loops_make_no_host_sync_per_iteration():
    model = tiny().eval()
    model.validate_values = False  # the model's own input checks are the API boundary's, not the loop's
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    obj = A.objective(model, y, "ce", "joint")
    for steps in (2, 9):
        assert _syncs(lambda: pgd(obj, x, 8 / 255, 2 / 255, steps, y=y)) == 0  # every iterate checked
        assert _syncs(lambda: apgd(obj, x, y, 8 / 255, steps)) == 0
        assert _syncs(lambda: apgd(obj, x, y, 0.5, steps, norm="L2")) == 0
    # APGD-T selects the still-robust examples once per target, never per iteration
    make = lambda idx, t: A.objective(model, y[idx], "dlr_t", "joint", t)  # noqa: E731
    per_target = [_syncs(lambda: apgd_targeted(make, model, x, y, 8 / 255, n, 2)) for n in (2, 9)]
    assert per_target[0] == per_target[1]
