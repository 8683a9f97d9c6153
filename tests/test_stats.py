"""Intervals (againzoo.stats) and the card's comparison of an AGAIN model with its twin."""

import numpy as np
import pytest
import torch

from againzoo.card import _pair_lines, compare, twin_pairs
from againzoo.stats import from_bits, newcombe, paired_bootstrap, seed_bootstrap, to_bits, wilson


def test_intervals_match_newcombes_worked_examples():
    # Newcombe 1998: 81/263, score (Wilson) interval 0.2553 to 0.3662; 56/70 - 48/80, hybrid score
    # interval (method 10) 0.0524 to 0.3339
    assert wilson(81 / 263, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert newcombe(56 / 70, 70, 48 / 80, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_bits_round_trip_and_the_paired_interval_is_tighter_than_the_unpaired_one():
    v = torch.tensor([True, False, True, True])
    assert to_bits(v) == "1011" and from_bits("1011").tolist() == [1, 0, 1, 1]
    rng = np.random.default_rng(0)
    b = (rng.random(1000) < 0.45).astype(np.uint8)
    a = b.copy()
    a[rng.choice(1000, 30, replace=False)] = 1  # a is b plus some images: paired, clearly better
    r = paired_bootstrap([a], [b])
    assert r["diff"] == pytest.approx(a.mean() - b.mean()) and r["diff_ci"][0] > 0
    assert r["ci"][0] <= r["mean"] <= r["ci"][1] and r["n"] == 1000
    lo, hi = newcombe(a.mean(), 1000, b.mean(), 1000)
    assert lo < 0 < hi  # the same data as independent samples: no call
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([a], [b[:10]])


def test_the_seed_interval_covers_what_the_seeds_disagree_on():
    """A variant that beats its twin on every image draw of every seed but one: the image-only
    interval calls it, the seed-and-image interval does not; a consistent gain survives both."""
    rng = np.random.default_rng(1)
    twin = [(rng.random(1000) < 0.40).astype(np.uint8) for _ in range(3)]
    gain, flip = [], []
    for s, t in enumerate(twin):
        g = t.copy()
        g[rng.choice(np.flatnonzero(t == 0), 40, replace=False)] = 1  # +4 points on this seed
        gain.append(g)
        f = t.copy()
        idx = np.flatnonzero(t == (1 if s == 2 else 0))
        f[rng.choice(idx, 40 if s == 2 else 80, replace=False)] = 0 if s == 2 else 1  # +8, +8, -4 points
        flip.append(f)
    assert paired_bootstrap(gain, twin)["diff_ci"][0] > 0 and seed_bootstrap(gain, twin)["diff_ci"][0] > 0
    r = seed_bootstrap(flip, twin)
    assert paired_bootstrap(flip, twin)["diff_ci"][0] > 0 > r["diff_ci"][0]  # only the seeds undo the call
    assert r["per_seed"] == pytest.approx([0.08, 0.08, -0.04]) and r["paired_seeds"] and r["n"] == 1000
    assert r["diff"] == pytest.approx(0.04) and r["diff_ci"][0] <= r["diff"] <= r["diff_ci"][1]
    one = seed_bootstrap(gain[:1], twin[:1])  # one seed: the image interval
    assert one["diff_ci"] == pytest.approx(paired_bootstrap(gain[:1], twin[:1])["diff_ci"], abs=0.01)
    unpaired = seed_bootstrap(gain[:2], twin)
    assert not unpaired["paired_seeds"] and "per_seed" not in unpaired
    with pytest.raises(ValueError, match="same images"):
        seed_bootstrap(gain, [t[:10] for t in twin])


def _info(again, per_example=None, n=4, clean=0.5, worst=0.25, name="x", evaluated="first 4", width=16):
    ev = {"suite": "paper", "norm": "Linf", "eps": 8 / 255, "clean_acc": clean, "worst_case_acc": worst,
          "data": {"name": "cifar10", "split": "test_lossless", "n": n, "evaluated": evaluated}, "columns": {}}
    if per_example:
        ev["per_example"] = per_example
    cfg = {"architecture": "again_resnet18" if again else "resnet18_cifar", "backbone": "resnet18_cifar",
           "again": {"layer": "layer4"} if again else None}
    model = {"kwargs": {"width": width}, "again": {"enabled": again, "gate_source": "pred"}}
    return {"eval": ev, "config": cfg, "recipe": {"name": f"r_{name}", "data": {"dataset": "cifar10"}, "model": model,
                                                  "epochs": 5}, "dir": f"zoo/{name}"}


def test_the_card_pairs_an_again_model_with_its_twin_and_gives_the_difference():
    a = _info(True, {"clean": "1101", "worst_case": "1100"}, clean=0.75, worst=0.5, name="again")
    t = _info(False, {"clean": "1001", "worst_case": "1000"}, name="twin")
    other = _info(False, {"clean": "1111", "worst_case": "1111"}, name="elsewhere", evaluated="first 4 of another set")
    assert twin_pairs([other, a, t]) == [(1, 2)] and twin_pairs([a, other]) == []
    wider = _info(False, {"clean": "1001", "worst_case": "1000"}, name="wider", width=64)  # another width is no twin
    longer = _info(False, {"clean": "1001", "worst_case": "1000"}, name="longer")
    longer["recipe"]["epochs"] = 9  # nor is another schedule
    assert twin_pairs([a, wider, longer]) == [] and twin_pairs([a, wider, longer, t]) == [(0, 3)]
    c = compare(a["eval"], t["eval"])
    assert c["worst_case"]["diff"] == pytest.approx(0.25) and c["clean"]["diff"] == pytest.approx(0.25)
    assert c["worst_case"]["ci"][0] <= 0.25 <= c["worst_case"]["ci"][1] and "paired" in c["interval"]
    text = "\n".join(_pair_lines([a, t]))
    assert "`again` minus its twin `twin`" in text and "+25.00 points" in text
    # records without per-example results: the unpaired interval, said so
    c = compare(_info(True)["eval"], _info(False, worst=0.5)["eval"])
    assert c["worst_case"]["diff"] == pytest.approx(-0.25) and "Newcombe" in c["interval"]
