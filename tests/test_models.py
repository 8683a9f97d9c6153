import pytest
import timm
import torch

import againzoo
from againzoo import ConfigError
from againzoo.models import BACKBONES

from .conftest import tiny

SLIM = {"resnet18_cifar": {"width": 8}, "preactresnet18": {"width": 8}, "wrn34_10": {"widen_factor": 1},
        "vgg16_cifar": {"width_mult": 0.125}}


@pytest.mark.parametrize("name", BACKBONES)
def test_registered_in_timm_with_cfg_and_api(name):
    assert timm.is_model(name)
    m = timm.create_model(name, num_classes=7, **SLIM[name]).eval()
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert timm.get_pretrained_cfg(name).input_size == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape[1] == m.num_features == m.feature_info[-1]["num_chs"]
    torch.testing.assert_close(m.forward_head(feats), m(x))
    assert m(x).shape == (2, 7)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)


@pytest.mark.parametrize("name", BACKBONES)
def test_normalisation_lives_inside(name):
    m = timm.create_model(name, **SLIM[name]).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(m.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(m.pretrained_cfg["std"]).view(1, 3, 1, 1)
    m.mean.zero_()
    m.std.fill_(1.0)
    out_raw = m((x - mean) / std)
    m.mean.copy_(mean)
    m.std.copy_(std)
    torch.testing.assert_close(m(x), out_raw, rtol=1e-5, atol=1e-5)


def test_full_size_parameter_counts():
    # standard sizes: ResNet-18 ~11.2M, WRN-34-10 ~46.2M parameters
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    assert 11.1 < count(timm.create_model("resnet18_cifar")) < 11.3
    assert 46.0 < count(timm.create_model("wrn34_10")) < 46.3


def test_cifar_stem_has_no_downsampling():
    m = timm.create_model("resnet18_cifar", width=8)
    assert m.stem.conv.kernel_size == (3, 3) and m.stem.conv.stride == (1, 1)
    assert not any(isinstance(mod, torch.nn.MaxPool2d) for mod in m.modules())
    assert m.forward_features(torch.rand(1, 3, 32, 32)).shape[-1] == 4


def test_pretrained_backbone_gives_clear_error():
    from againzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no published weights for resnet18_cifar.cifar10"):
        timm.create_model("resnet18_cifar", pretrained=True)


def test_list_and_create():
    assert againzoo.list_models() == ["again_resnet18", "again_preactresnet18", "again_wrn34_10", "again_vgg16"]
    assert "again_resnet18d" in againzoo.list_models("again_resnet18*", generic=True)
    m = tiny("again_vgg16", num_classes=100)
    assert m.num_classes == 100 and m.layer == "stages.4"
    with pytest.raises(ConfigError, match="not a timm model"):
        againzoo.create_model("again_nosuchnet")
    with pytest.raises(ConfigError, match="start with 'again_'"):
        againzoo.create_model("resnet18_cifar")
