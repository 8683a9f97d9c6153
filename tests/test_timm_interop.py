"""timm interoperability: one normalisation through timm's own data pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import againzoo
from againzoo.data import load_dataset
from againzoo.hub import load_local, model_config


@pytest.mark.parametrize("which", ["again", "plain"])
def test_timm_transform_gives_the_tensor_path_predictions(tiny_runs, which):
    """resolve_data_config + create_transform on PIL images == feeding [0, 1] tensors (no double
    normalisation: the models normalise inside and advertise identity mean/std)."""
    model = load_local(tiny_runs[which] / "best")
    cfg = resolve_data_config(model=model)
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert model.pretrained_cfg["model_mean"] != (0.0, 0.0, 0.0)  # the statistics applied inside
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
    statistics in model_mean/model_std, and both survive a save/load round trip."""
    kw = {"width": 8} if name == "again_resnet18" else {}
    model = againzoo.create_model(name, num_classes=10, **kw).eval()
    cfg = model.pretrained_cfg
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert np.allclose(model.mean.flatten().tolist(), cfg["model_mean"])
    againzoo.save_pretrained(model, tmp_path / "m", model_config(model))
    back = load_local(tmp_path / "m")
    assert torch.equal(back.mean, model.mean) and torch.equal(back.std, model.std)
    x = torch.rand(2, 3, *model.input_size[1:])
    assert torch.allclose(back(x), model(x), atol=1e-6)


def test_configs_written_before_the_split_still_load(tmp_path):
    """An older config.json (dataset statistics in mean/std, no model_mean) keeps its normalisation."""
    import json

    model = againzoo.create_model("again_resnet18", num_classes=10, width=8).eval()
    againzoo.save_pretrained(model, tmp_path / "m", model_config(model))
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    pc = c["pretrained_cfg"]
    pc["mean"], pc["std"] = pc.pop("model_mean"), pc.pop("model_std")
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    back = load_local(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(back(x), model(x), atol=1e-6)
    assert back.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)
