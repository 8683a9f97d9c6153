import pytest
import timm
import torch

import againzoo
from againzoo import AgainModel, ConfigError, ShapeError
from againzoo.errors import UsageError
from againzoo.losses import joint_loss

from .conftest import tiny


def test_logits_tensor_aux_on_request_and_again_switch():
    m = tiny().eval()
    x = torch.rand(3, 3, 16, 16)
    out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
    logits, aux = m(x, return_aux=True)
    assert torch.equal(logits, out) and aux.shape == (3, 10)
    plain = m(x, again=False)
    bare = timm.create_model("resnet18_cifar", width=8).eval()
    bare.load_state_dict(m.backbone.state_dict())
    torch.testing.assert_close(plain, bare(x))  # again=False is the bare backbone
    assert not torch.allclose(plain, out)


def test_train_forward_uses_targets_and_requires_them():
    m = tiny().train()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    assert m(x, targets=y).shape == (4, 10)
    with pytest.raises(ValueError, match="needs targets"):
        m(x)
    assert m(x, again=False).shape == (4, 10)  # no targets needed without AGAIN


def test_hook_applies_ase_of_eq4_in_eval():
    m = tiny().eval()
    x = torch.rand(2, 3, 16, 16)
    feats = {}
    h = m.backbone.layer4.register_forward_hook(lambda mod, i, o: feats.setdefault("a", o))
    logits, aux = m(x, return_aux=True)
    h.remove()
    # the hook registered after AGAIN's sees the gated output; recompute from the raw features
    raw = {}
    h = m.backbone.layer4.register_forward_hook(lambda mod, i, o: raw.setdefault("a", o), prepend=True)
    m(x)
    h.remove()
    w = m.ase.fc.weight
    expected = raw["a"] * w[aux.argmax(1)].view(2, -1, 1, 1)
    torch.testing.assert_close(feats["a"], expected)
    torch.testing.assert_close(logits, m.backbone.forward_head(expected))


def test_joint_loss_gradients_reach_backbone_main_head_and_ase():
    m = tiny().train()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    logits, aux = m(x, targets=y, return_aux=True)
    joint_loss(logits, aux, y, m.aux_weight).backward()
    for p in (m.backbone.stem.conv.weight, m.backbone.layer1[0].conv1.weight, m.backbone.fc.weight,
              m.ase.fc.weight, m.ase.fc.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_joint_loss_is_eq7():
    logits, aux = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(joint_loss(logits, aux, y, 0.7), ce(logits, y) + 0.7 * ce(aux, y))
    torch.testing.assert_close(joint_loss(logits, None, y), ce(logits, y))


def test_state_dict_round_trip_gives_identical_outputs():
    m = tiny().eval()
    with torch.no_grad():  # make the ASE head non-trivial
        m.ase.fc.weight.normal_()
    fresh = tiny().eval()
    fresh.load_state_dict(m.state_dict())
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(m(x), fresh(x))
    assert set(m.state_dict()) == {f"backbone.{k}" for k in m.backbone.state_dict()} | {"ase.fc.weight", "ase.fc.bias"}


def test_backbone_keys_unchanged_and_unwrap_restores_bit_identical_outputs():
    backbone = timm.create_model("resnet18_cifar", width=8).eval()
    x = torch.rand(2, 3, 16, 16)
    before = backbone(x)
    keys = list(backbone.state_dict())
    m = AgainModel(backbone).eval()
    assert list(m.backbone.state_dict()) == keys
    assert not torch.equal(m(x), before)
    back = m.unwrap()
    assert back is backbone and torch.equal(back(x), before)
    with pytest.raises(UsageError, match="unwrapped"):
        m(x)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown layer 'layer9'.*layer4"):
        tiny(layer="layer9")


def test_other_layers_can_be_hooked():
    m = tiny(layer="layer3")
    assert m.num_features == 32 and m.layer == "layer3"
    assert m.eval()(torch.rand(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("alpha", [0.4, 1.2])
def test_alpha_outside_range_refused(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        tiny(alpha=alpha)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(3, 16, 16), "4-D batch"),
        (torch.rand(2, 1, 16, 16), "expected 3 channels"),
        ((torch.rand(2, 3, 16, 16) * 255).to(torch.uint8), "dtype"),
        ([1, 2, 3], "torch.Tensor"),
    ],
)
def test_bad_input_says_what_was_expected(x, match):
    with pytest.raises(ShapeError, match=match):
        tiny().eval()(x)


def test_bad_targets_shape():
    with pytest.raises(ShapeError, match="targets"):
        tiny().train()(torch.rand(2, 3, 16, 16), targets=torch.tensor([[0, 1]]))


def test_eval_is_deterministic():
    m = tiny().eval()
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(m(x), m(x))


def _one_step(m, x, y):
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    logits, aux = m(x, targets=y, return_aux=True)
    loss = joint_loss(logits, aux, y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    m.eval()
    out = m(x)
    assert out.shape == (x.shape[0], m.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["again_resnet18", "again_wrn34_10", "again_preactresnet18", "again_vgg16"])
def test_zoo_backbones_wrap_and_train_one_step(name):
    _one_step(tiny(name), torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize(
    "arch, kw, px, layout",
    [
        ("resnet18", {}, 16, "NCHW"),
        ("convnext_atto", {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)}, 32, "NCHW"),
        ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}, 16, "NLC"),
    ],
)
def test_timm_backbones_wrap_and_train_one_step(arch, kw, px, layout):
    backbone = timm.create_model(arch, num_classes=10, **kw)
    m = AgainModel(backbone, input_size=(3, px, px))
    assert m.layout == layout and m.normalize_input
    _one_step(m, torch.rand(4, 3, px, px), torch.tensor([0, 1, 2, 3]))


def test_generic_factory_name():
    m = againzoo.create_model("again_resnet18d", num_classes=5, pretrained_cfg_overlay={"input_size": (3, 32, 32)})
    assert m.layer == "layer4" and m.num_classes == 5
    assert m.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)
