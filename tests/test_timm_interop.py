"""timm interoperability: one normalisation through timm's own data pipeline."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import againzoo
from againzoo.data import load_dataset
from againzoo.checkpoint import load_local, model_config
from againzoo.models._base import input_stats


@pytest.mark.parametrize("which", ["again", "plain"])
def test_timm_transform_gives_the_tensor_path_predictions(tiny_runs, which):
    """resolve_data_config + create_transform on PIL images == feeding [0, 1] tensors (no double
    normalisation: the models normalise inside and advertise identity mean/std)."""
    model = load_local(tiny_runs[which] / "best")
    cfg = resolve_data_config(model=model)
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert input_stats(model)[0] != (0.0, 0.0, 0.0)  # the statistics applied inside
    transform = create_transform(**cfg)
    ds = load_dataset("digits", "test")
    via_timm = torch.stack([transform(Image.fromarray(a)) for a in ds.x[:128]])
    tensors = torch.from_numpy(ds.x[:128]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.equal(model(via_timm).argmax(1), model(tensors).argmax(1))
        acc = (model(via_timm).argmax(1) == torch.from_numpy(ds.y[:128])).float().mean()
    assert acc > 0.5


@pytest.mark.parametrize("name", ["again_resnet18", "again_convnext_atto"])
def test_every_model_kind_advertises_one_normalisation(name, tmp_path):
    """CIFAR backbones, timm backbones wrapped by AgainModel: identity in pretrained_cfg, the real
    statistics applied inside, and both survive a save/load round trip."""
    kw = {"width": 8} if name == "again_resnet18" else {}
    model = againzoo.create_model(name, num_classes=10, **kw).eval()
    cfg = model.pretrained_cfg
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert input_stats(model)[0] != (0.0, 0.0, 0.0)
    assert np.allclose((model.mean if name != "again_resnet18" else model.backbone.mean).flatten().tolist(),
                       input_stats(model)[0])
    againzoo.save_pretrained(model, tmp_path / "m", model_config(model))
    back = load_local(tmp_path / "m")
    assert torch.equal(back.mean, model.mean) and torch.equal(back.std, model.std)
    x = torch.rand(2, 3, *model.input_size[1:])
    assert torch.allclose(back(x), model(x), atol=1e-6)


def test_configs_of_againzoo_0_1_still_load(tmp_path):
    """A config.json as againzoo 0.1 wrote it (the published again_resnet18's shape: architecture =
    the backbone, the dataset statistics in pretrained_cfg mean/std) keeps its normalisation."""
    import json

    model = againzoo.create_model("again_resnet18", num_classes=10, width=8,
                                  norm_mean=(0.3, 0.4, 0.5), norm_std=(0.2, 0.25, 0.3)).eval()
    againzoo.save_pretrained(model, tmp_path / "m", model_config(model))
    old = {"architecture": "resnet18_cifar", "num_classes": 10, "num_features": 64, "model_args": {"width": 8},
           "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3],
                              "normalize_in_model": True, "label_names": list("abcdefghij")},
           "again": model.again_config(), "againzoo_version": "0.1.0"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(old))
    from safetensors.torch import load_file, save_file

    w = str(tmp_path / "m" / "model.safetensors")
    save_file(load_file(w), w, metadata={"format": "pt"})  # 0.1 wrote no content hashes either
    back = load_local(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(back(x), model(x), atol=1e-6)
    assert back.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)
    assert np.allclose(input_stats(back)[0], (0.3, 0.4, 0.5))
    # the weights' own buffers are not what keeps it: a fresh build from that config applies them too
    from againzoo.checkpoint import model_from_config

    assert np.allclose(input_stats(model_from_config(old))[0], (0.3, 0.4, 0.5))


# -- timm's builder, entry points and Hub layouts --------------------------------------------------

SLIM = {"resnet18_cifar": {"width": 4}, "preactresnet18_cifar": {"width": 4}, "wrn34_10_cifar": {"widen_factor": 1},
        "vgg16_cifar": {"width_mult": 0.0625}}


def test_the_four_cifar_backbones_are_listed_under_cifar():
    import timm

    assert timm.list_models("*cifar*") == sorted(SLIM)


@pytest.mark.parametrize("name", sorted(SLIM))
def test_features_only_returns_the_feature_maps(name):
    import timm

    full = timm.create_model(name, **SLIM[name]).eval()
    feats = timm.create_model(name, features_only=True, out_indices=(1, 2, 3), **SLIM[name]).eval()
    keep = feats.state_dict()
    feats.load_state_dict({f"model.{k}": v for k, v in full.state_dict().items() if f"model.{k}" in keep})
    x = torch.rand(2, 3, 32, 32)
    maps = feats(x)
    assert [m.shape[1] for m in maps] == feats.feature_info.channels() == [full.feature_info[i]["num_chs"] for i in (1, 2, 3)]
    assert [32 // m.shape[-1] for m in maps] == feats.feature_info.reduction()
    with torch.no_grad():  # the same maps as the whole model's forward_intermediates
        assert all(torch.allclose(a, b) for a, b in zip(maps, full.forward_intermediates(x, [1, 2, 3], intermediates_only=True)))


def test_timm_kwargs_in_chans_global_pool_drop_rate_num_classes():
    import timm

    m = timm.create_model("resnet18_cifar", in_chans=1, num_classes=3, width=4, drop_rate=0.2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    before = m.stem.conv.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, m.stem.conv.weight)
    assert m.pretrained_cfg["input_size"][0] == 1 and m.pretrained_cfg["mean"] == (0.0,)
    a = againzoo.create_model("again_resnet18", in_chans=1, width=4).train()
    logits, aux = a(torch.rand(4, 1, 16, 16), targets=torch.tensor([0, 1, 2, 3]), return_aux=True)
    assert logits.shape == aux.shape == (4, 10)
    pooled = timm.create_model("wrn34_10", widen_factor=1, num_classes=0, global_pool="catavgmax").eval()
    assert pooled(torch.rand(2, 3, 32, 32)).shape == (2, 128)  # avg and max of 64 channels, concatenated
    bare = timm.create_model("vgg16_cifar", width_mult=0.0625, num_classes=0)
    assert bare(torch.rand(2, 3, 32, 32)).shape == (2, 32)


def test_againzoo_checkpoints_load_through_timm_local_dir_and_hf_hub(tmp_path):
    """A checkpoint saved by againzoo: timm.create_model('local-dir:...') and, from an offline Hub
    cache, 'hf-hub:...' give the AgainModel with logits equal to againzoo.from_pretrained."""
    import subprocess
    import sys

    import timm

    from .test_hub import populate_cache

    m = againzoo.create_model("again_resnet18", width=4, norm_mean=(0.2, 0.3, 0.4), norm_std=(0.5, 0.5, 0.5)).eval()
    with torch.no_grad():
        m.ase.fc.weight.normal_()
    ckpt = againzoo.save_pretrained(m, tmp_path / "ckpt", label_names=list("abcdefghij"))
    x = torch.rand(3, 3, 32, 32)
    ours = againzoo.from_pretrained(ckpt)
    via_timm = timm.create_model(f"local-dir:{ckpt}", pretrained=True).eval()
    assert type(via_timm).__name__ == "AgainModel"
    with torch.no_grad():
        assert torch.equal(via_timm(x), ours(x)) and torch.equal(ours(x), m(x))
    assert tuple(via_timm.pretrained_cfg["label_names"]) == tuple("abcdefghij")
    populate_cache(tmp_path / "hf", "someone/again-tiny", ckpt)
    from safetensors.torch import save_file

    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    code = ("import torch, timm, againzoo\n"
            "from safetensors.torch import load_file\n"
            f"x = load_file({str(tmp_path / 'x.safetensors')!r})['x']\n"
            "a = timm.create_model('hf-hub:someone/again-tiny', pretrained=True).eval()\n"
            "b = againzoo.from_pretrained('someone/again-tiny')\n"
            "c = againzoo.from_pretrained('hf-hub:someone/again-tiny')\n"
            "print(type(a).__name__, type(c).__name__, bool(torch.equal(a(x), b(x))), bool(torch.equal(c(x), b(x))))\n")
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["AgainModel", "AgainModel", "True", "True"]


def test_a_timm_save_for_hf_directory_loads_with_from_pretrained(tmp_path):
    import timm
    from timm.models._hub import save_for_hf

    for name, kw in (("resnet18_cifar", {"width": 4}), ("test_resnet", {})):
        native = timm.create_model(name, num_classes=5, **kw).eval()
        save_for_hf(native, tmp_path / name, model_args=kw, safe_serialization=True)
        loaded = againzoo.from_pretrained(tmp_path / name)
        x = torch.rand(2, 3, 32, 32)
        cfg = native.pretrained_cfg
        expected = native((x - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(1, -1, 1, 1))
        with torch.no_grad():
            assert torch.allclose(loaded(x), expected, atol=1e-5), name
    save_for_hf(timm.create_model("test_resnet"), tmp_path / "pickled")  # timm's default: pytorch_model.bin
    with pytest.raises(againzoo.CheckpointError, match="pytorch_model.bin, a pickle"):
        againzoo.from_pretrained(tmp_path / "pickled")


def test_zoo_weights_are_timm_pretrained_tags():
    import timm

    assert "again_resnet18.cifar10" in timm.list_pretrained("again_*")
    with pytest.warns(UserWarning, match="preliminary"):
        via_timm = timm.create_model("again_resnet18", pretrained=True).eval()
    with pytest.warns(UserWarning):
        ours = againzoo.create_model("again_resnet18", pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(via_timm(x), ours(x))


def test_plain_timm_takes_the_backbone_of_an_again_checkpoint(tmp_path):
    """timm.create_model('<backbone>', pretrained=True, pretrained_cfg_overlay=dict(file=...)) on an
    againzoo AGAIN checkpoint loads every backbone tensor (strictly) and drops the ASE head."""
    import timm

    m = againzoo.create_model("again_resnet18", width=4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    ckpt = againzoo.save_pretrained(m, tmp_path / "ckpt")
    plain = timm.create_model("resnet18_cifar", width=4, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(ckpt / "model.safetensors"))).eval()
    assert all(torch.equal(v, m.backbone.state_dict()[k]) for k, v in plain.state_dict().items())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), m.unwrap()(x))


@pytest.mark.parametrize("name", ["resnet18_cifar", "preactresnet18", "wrn34_10", "vgg16_cifar"])
def test_grad_checkpointing_gives_the_same_gradients(name):
    kw = {"widen_factor": 1} if name == "wrn34_10" else {"width_mult": 0.125} if name == "vgg16_cifar" else {"width": 8}
    x = torch.rand(4, 3, 32, 32)
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        m = timm.create_model(name, num_classes=10, **kw).train()
        m.set_grad_checkpointing(on)
        assert m.grad_checkpointing is on
        m(x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_grad_checkpointing_of_an_again_model_replays_the_gate_and_hff():
    """A checkpointed stage is recomputed in the backward pass: with the label-mixed gate and HFF
    (random draws) the gradients still equal those without checkpointing."""
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        m = againzoo.create_model("again_resnet18", width=8, layer=["last_branch", "layer4"]).train()
        m.set_grad_checkpointing(on)
        torch.manual_seed(1)
        logits, aux = m(x, targets=y, return_aux=True)
        againzoo.joint_loss(logits, aux, y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        assert all(a is None for a in m._aux)  # the recomputation left no ASE logits behind
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(againzoo.ConfigError, match="checkpointing"):
        againzoo.create_model("again_resnet10t", pretrained_cfg_overlay={"input_size": (3, 32, 32)}).set_grad_checkpointing()


def test_features_only_wrn34_10_with_its_default_out_indices():
    m = timm.create_model("wrn34_10", features_only=True, widen_factor=1)
    outs = m(torch.rand(2, 3, 32, 32))
    assert [o.shape[1] for o in outs] == m.feature_info.channels() == [16, 16, 32, 64]


def test_a_generic_again_checkpoint_loads_through_timm_local_dir(tmp_path):
    m = againzoo.create_model("again_resnet10t", pretrained_cfg_overlay={"input_size": (3, 32, 32)}).eval()
    againzoo.save_pretrained(m, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["architecture"] == "again_generic"
    t = timm.create_model(f"local-dir:{tmp_path / 'ckpt'}", pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(t, againzoo.AgainModel) and t.backbone.pretrained_cfg["architecture"] == "resnet10t"
    assert torch.equal(t(x), m(x)) and torch.equal(againzoo.from_pretrained(tmp_path / "ckpt")(x), m(x))
