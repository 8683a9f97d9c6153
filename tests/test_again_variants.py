"""AGAIN variants (issue: a classifier that copies its gate): sites, label-free gates, detached rows,
the gate diagnostics that flag a shortcut, and the training log that shows one forming."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import againzoo
from againzoo import AgainModel, ConfigError
from againzoo.gate_diagnostics import gate_diagnostics
from againzoo.losses import joint_loss

from .conftest import TINY_RUN, tiny

X = torch.rand(6, 3, 32, 32)
Y = torch.tensor([0, 1, 2, 3, 4, 5])


class Toy(nn.Module):
    """Features = 1 everywhere (so the gate alone decides what the classifier sees) or the image's mean
    colour; classifier = identity on the pooled features."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.feat.weight.zero_()
            self.feat.bias.fill_(1.0)
            self.fc.weight.copy_(torch.eye(4))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.feat(x).mean((2, 3)))


def toy_model(copies: bool) -> AgainModel:
    m = AgainModel(Toy(), layer="feat", input_size=(3, 8, 8)).eval()
    with torch.no_grad():
        # a copying model: gated features = 5 * one-hot(gate class) -> the classifier outputs the gate's class;
        # a constant gate: every row the same -> the prediction cannot depend on which row gated it
        m.ase.fc.weight.copy_(5 * torch.eye(4) if copies else torch.ones(4, 4))
        m.ase.fc.bias.zero_()
    return m


def test_diagnostics_flag_a_classifier_that_copies_its_gate_and_not_a_constant_gate():
    x, y = torch.rand(40, 3, 8, 8), torch.arange(40) % 4
    copy = gate_diagnostics(toy_model(True), x, y)
    const = gate_diagnostics(toy_model(False), x, y)
    c = copy["clean"]
    assert c["oracle_acc"] == 1.0 and c["wrong_acc"] == 0.0 and c["follows_wrong"] == 1.0
    assert c["follows_random"] == 1.0 and c["agree"] == 1.0
    assert copy["gate_shortcut"] is True
    assert const["gate_shortcut"] is False and const["clean"]["follows_wrong"] <= 0.5
    assert const["clean"]["oracle_acc"] == const["clean"]["wrong_acc"] == const["clean"]["acc"]  # gate-blind


def test_eval_json_has_gate_block_and_flag():
    from againzoo.evaluation import evaluate

    m = toy_model(True)
    x, y = torch.rand(24, 3, 8, 8), torch.arange(24) % 4
    r = evaluate(m, x, y, "quick", eps=8 / 255, progress=False, checks=False, aa_iter=2, n_targets=2)
    assert set(r["gate"]) >= {"clean", "gate_shortcut", "sites", "meaning"}
    assert r["gate"]["gate_shortcut"] is True
    assert "adversarial" in r["gate"] or r["clean_acc"] == 0
    flag = next(f for f in r["flags"] if f["check"] == "gate_shortcut")
    assert not flag["passed"] and "copies its gate" in flag["detail"]


def test_two_sites_authors_layout():
    m = tiny(layer=["last_branch", "last_stage"], aux_weight=2.0, hff=False)
    assert m.sites == ["layer4.1.conv1:input", "layer4"] and m.layer == "layer4"
    keys = {k for k in m.state_dict() if "ase" in k}
    assert keys == {"ase.fc.weight", "ase.fc.bias", "ase_extra.0.fc.weight", "ase_extra.0.fc.bias"}
    m.train()
    logits, aux = m(X, targets=Y, return_aux=True)
    assert isinstance(aux, tuple) and len(aux) == 2
    expected = F.cross_entropy(logits, Y) + 2.0 * (F.cross_entropy(aux[0], Y) + F.cross_entropy(aux[1], Y)) / 2
    torch.testing.assert_close(joint_loss(logits, aux, Y, 2.0), expected)
    assert m.again_config()["layer"] == ["layer4.1.conv1:input", "layer4"]


def test_branch_site_gates_the_residual_branch_only():
    m = tiny(layer="last_branch").eval()
    block = m.backbone.layer4[1]
    seen = {}
    block.register_forward_pre_hook(lambda mod, i: seen.__setitem__("block_in", i[0].clone()))
    block.conv1.register_forward_hook(lambda mod, i, o: seen.__setitem__("conv1_in", i[0].clone()))
    c = torch.tensor([3, 3, 1, 1, 0, 0])
    m(X, force_gate=c)
    w = m.ase.fc.weight.detach()[c].view(6, -1, 1, 1)
    torch.testing.assert_close(seen["conv1_in"], seen["block_in"] * w)  # the branch sees the gated features
    assert not torch.allclose(seen["conv1_in"], seen["block_in"])  # (the identity shortcut sees block_in)


@pytest.mark.parametrize("source", ["pred", "soft"])
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_label_free_gates_never_read_the_labels(source, alpha):
    m = tiny(gate_source=source, alpha=alpha).train()
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    torch.manual_seed(7)
    a_logits, a_aux = m(X, targets=Y, return_aux=True)
    torch.manual_seed(7)
    b_logits, b_aux = m(X, targets=Y[perm], return_aux=True)
    assert torch.equal(a_logits, b_logits) and torch.equal(a_aux, b_aux)  # permuted labels change nothing here ...
    assert joint_loss(a_logits, a_aux, Y) != joint_loss(b_logits, b_aux, Y[perm])  # ... but the loss
    torch.manual_seed(7)
    c_logits = m(X, return_aux=True)[0]  # and no labels are needed at all
    assert torch.equal(a_logits, c_logits)


def test_the_paper_gate_does_read_the_labels():
    m = tiny().train()
    torch.manual_seed(7)
    a = m(X, targets=Y)
    torch.manual_seed(7)
    b = m(X, targets=Y.flip(0))
    assert not torch.equal(a, b)


def test_soft_gate_is_used_at_inference_and_is_differentiable():
    m = tiny(gate_source="soft").eval()
    x = X.clone().requires_grad_(True)
    logits, aux = m(x, return_aux=True)
    g = torch.autograd.grad(logits.logsumexp(1).sum(), x)[0]
    assert g.abs().sum() > 0
    with torch.no_grad():
        hard = tiny(gate_source="label")
        hard.load_state_dict(m.state_dict())
        assert not torch.allclose(hard.eval()(X), m(X))  # not the argmax gate


def test_detached_gate_rows_get_no_gradient_from_the_main_loss():
    for detach, expect_grad in ((True, False), (False, True)):
        m = tiny(detach_gate=detach).train()
        logits, aux = m(X, targets=Y, return_aux=True)
        g_main = torch.autograd.grad(F.cross_entropy(logits, Y), m.ase.fc.weight, allow_unused=True)[0]
        assert (g_main is not None and g_main.abs().sum() > 0) == expect_grad
        logits, aux = m(X, targets=Y, return_aux=True)
        g_aux = torch.autograd.grad(F.cross_entropy(aux, Y), m.ase.fc.weight)[0]
        assert g_aux.abs().sum() > 0  # the ASE term always trains the rows


def test_bad_sites_are_one_line_errors():
    with pytest.raises(ConfigError, match="':input' or ':output'"):
        tiny(layer="layer4:sideways")
    with pytest.raises(ConfigError, match="unknown layer 'layer9'"):
        tiny(layer=["layer9:input", "layer4"])
    with pytest.raises(ConfigError, match="twice"):
        tiny(layer=["layer4", "layer4:output"])
    with pytest.raises(ConfigError, match="gate_source"):
        tiny(gate_source="oracle")


def test_variant_checkpoints_round_trip(tmp_path):
    m = tiny(layer=["last_branch", "layer4"], gate_source="soft", detach_gate=True, alpha=0.8).eval()
    againzoo.save_pretrained(m, tmp_path / "ckpt")
    back = againzoo.from_pretrained(tmp_path / "ckpt")
    assert back.sites == m.sites and back.gate_source == "soft" and back.detach_gate and back.alpha == 0.8
    assert torch.equal(back(X), m(X))


VARIANTS = {  # the study's variants (benchmarks/again_study.py), each a recipe option
    "paper": [],
    "authors": ["model.again.layer=[last_branch, last_stage]", "model.again.aux_weight=2", "model.again.hff=false"],
    "branch": ["model.again.layer=last_branch"],
    "pred": ["model.again.gate_source=pred", "model.again.alpha=1.0"],
    "soft": ["model.again.gate_source=soft", "model.again.alpha=1.0"],
    "soft_mix": ["model.again.gate_source=soft", "model.again.alpha=0.6"],
    "detach": ["model.again.detach_gate=true"],
    "no_hff_end_half_aux2": ["model.again.hff=false", "model.again.schedule.end=0.5", "model.again.aux_weight=2"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_logs_gate_figures_and_evaluates(variant, tmp_path):
    from againzoo.evaluation import evaluate_checkpoint
    from againzoo.training import train

    over = [o for o in TINY_RUN if not o.startswith("epochs")] + ["epochs=1", "data.limit=200",
                                                                  "model.again.schedule.ramp_epochs=0"]
    run = train("quickstart", overrides=[f"output_dir={tmp_path}", *over, *VARIANTS[variant]], progress=False)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_main_ce", "train_ase_ce", "train_ase_acc", "train_gate_agree", "val_gate_ase_acc",
                "val_gate_oracle_acc", "val_gate_follows_wrong"):
        assert key in row and 0 <= row[key] < 50, key
    assert row["again_batches"] > 0
    result, _ = evaluate_checkpoint(str(run), "quick", n_examples=12, progress=False, aa_iter=2, n_targets=2,
                                    checks=False, write=False)
    assert 0 <= result["gate"]["clean"]["follows_wrong"] <= 1 and isinstance(result["gate"]["gate_shortcut"], bool)


def test_recipe_validates_the_new_options():
    from againzoo import recipes

    r = recipes.load("quickstart", ["model.again.layer=[last_branch, layer4]", "model.again.gate_source=soft",
                                    "data.limit=100"])
    assert r.model.again.layer == ["last_branch", "layer4"] and r.data.limit == 100
    with pytest.raises(ConfigError, match="gate_source"):
        recipes.load("quickstart", ["model.again.gate_source=oracle"])
    with pytest.raises(ConfigError, match="each site once"):
        recipes.load("quickstart", ["model.again.layer=[layer4, layer4]"])
    with pytest.raises(ConfigError, match="data.limit"):
        recipes.load("quickstart", ["data.limit=0"])


def test_the_zoo_recipe_and_the_references_follow_the_study_verdict():
    """benchmarks/RESULTS.md: every label-gated variant copies its gate and no variant beats the twin;
    the zoo's AGAIN recipe takes the best sound one (a label-free gate) and the paper's AGAIN rows
    carry our caveat (the baselines do not)."""
    from againzoo import recipes
    from againzoo.references import reference_for

    zoo = recipes.load("cifar10_resnet18_again_pgd_at_zoo").model.again
    assert zoo.gate_source == "pred" and zoo.alpha == 1.0
    assert "caveat" in reference_for("cifar10_resnet18_again_pgd_at")
    assert "caveat" not in reference_for("cifar10_resnet18_pgd_at")
