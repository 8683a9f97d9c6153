import json

import pytest
import timm
import torch
from typer.testing import CliRunner

from againzoo import AgainModel
from againzoo.analysis import asc, cam, compactness, corruption_experiment, dataset_asc, gaps
from againzoo.cli import app

from .conftest import tiny


def test_asc_of_a_hand_built_map():
    m = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]],
                      [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.2]]])
    # Eq. 2 by hand: map 0 has max 8, threshold 4: elements > 4 are 5, 6, 7, 8 -> 4/9;
    # map 1 has max 1, threshold 0.5: eight elements of 9 exceed it
    torch.testing.assert_close(asc(m, 0.5), torch.tensor([4 / 9, 8 / 9]))
    torch.testing.assert_close(asc(m, 0.9), torch.tensor([1 / 9, 8 / 9]))


def test_cam_is_eq1_for_a_gap_linear_head(real_images):
    x = real_images[0][:6]
    model = timm.create_model("resnet18_cifar", width=8).eval()
    with torch.no_grad():
        feats = model.forward_features(x)  # (N, C, 4, 4) at layer4
        logits = model(x)
    y = torch.tensor([0, 3, 5, 1, 9, 2])
    r = cam(model, x, y)
    assert r.method == "cam" and r.layer == "layer4"
    w = model.fc.weight
    by_hand = torch.stack([sum(w[y[i], k] * feats[i, k] for k in range(feats.shape[1])) for i in range(6)])
    torch.testing.assert_close(r.maps, by_hand, rtol=1e-5, atol=1e-5)
    # GAP + Linear: logit_c = mean(M_c) + b_c
    torch.testing.assert_close(r.maps.flatten(1).mean(1) + model.fc.bias[y], logits.gather(1, y[:, None]).squeeze(1),
                               rtol=1e-4, atol=1e-4)


def test_cam_of_both_heads_of_an_again_model(real_images):
    x = real_images[0][:4]
    model = tiny().eval()
    with torch.no_grad():
        model.ase.fc.weight.normal_()
    raw = {}
    h = model.backbone.layer4.register_forward_hook(lambda m, i, o: raw.setdefault("a", o), prepend=True)
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
    h.remove()
    gated = raw["a"] * model.ase.fc.weight[aux.argmax(1)][:, :, None, None]
    main = cam(model, x)
    ase = cam(model, x, head="ase")
    assert (main.method, ase.method) == ("cam", "cam")
    torch.testing.assert_close(main.maps, torch.einsum("nchw,nc->nhw", gated, model.backbone.fc.weight[logits.argmax(1)]))
    torch.testing.assert_close(ase.maps, torch.einsum("nchw,nc->nhw", raw["a"], model.ase.fc.weight[aux.argmax(1)]))


def test_grad_cam_where_cam_does_not_apply(real_images):
    model = timm.create_model("resnet18_cifar", width=8).eval()
    r = cam(model, real_images[0][:3], layer="layer3")
    assert r.method == "grad-cam" and r.maps.shape == (3, 8, 8) and (r.maps >= 0).all()
    with pytest.raises(ValueError, match="CAM does not apply"):
        cam(model, real_images[0][:3], layer="layer3", method="cam")
    vit = AgainModel(timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                                       embed_dim=32, depth=1, num_heads=2))
    r = cam(vit, real_images[0][:2])
    assert r.method == "grad-cam" and r.maps.shape == (2, 4, 4)
    assert dataset_asc(vit, real_images[0][:2], real_images[1][:2]).shape == (2,)


def test_corruption_uses_only_examples_both_models_classify_correctly(real_images):
    x, y = real_images[0][:40], real_images[1][:40]

    class Oracle(torch.nn.Module):
        """Returns the true label except on the listed image indices (recognised by their pixels)."""

        def __init__(self, wrong):
            super().__init__()
            self.inner = timm.create_model("resnet18_cifar", width=8)
            self.keys = {float(x[i].sum()): int(y[i]) for i in range(len(y))}
            self.wrong = {float(x[i].sum()) for i in wrong}
            self.num_classes = 10

        def forward(self, z):
            base = self.inner(z) * 0.01
            out = []
            for i in range(len(z)):
                key = float(z[i].sum())
                label = self.keys.get(key)
                row = base[i].clone()
                if label is not None:
                    row = row + 10 * torch.nn.functional.one_hot(torch.tensor((label + (key in self.wrong)) % 10), 10)
                out.append(row)
            return torch.stack(out)

        def get_classifier(self):
            return self.inner.fc

    std, rob = Oracle(wrong=[0, 1, 2]).eval(), Oracle(wrong=[2, 3]).eval()
    std.inner.pretrained_cfg = rob.inner.pretrained_cfg = {}
    r = corruption_experiment(_Wrap(std), _Wrap(rob), x, y, eps=8 / 255, steps=2)
    assert r["used_indices"] == [i for i in range(40) if i not in (0, 1, 2, 3)]
    assert r["n_used"] == 36 and r["standard"]["original_clean"] == 1.0 and r["robust"]["original_clean"] == 1.0


class _Wrap(torch.nn.Module):
    """A plain classifier whose CAM falls back to Grad-CAM on its inner backbone's layer4."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.feature_info = m.inner.feature_info

    def forward(self, z):
        return self.m(z)

    def named_modules(self, *a, **k):
        return self.m.inner.named_modules(*a, **k)

    def get_classifier(self):
        return self.m.inner.fc


def test_compactness_orders_tight_and_loose_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(50)
    tight = centers[labels] + 0.1 * torch.randn(150, 2, generator=g)
    loose = centers[labels] + 3.0 * torch.randn(150, 2, generator=g)
    assert compactness(tight.numpy(), labels.numpy()) < 0.05 < compactness(loose.numpy(), labels.numpy())


@pytest.mark.slow
def test_every_command_writes_png_and_json(tiny_runs, tmp_path):
    a, b = str(tiny_runs["again"]), str(tiny_runs["plain"])
    runner = CliRunner()
    for args in (["cam", a, "-n", "4"], ["asc", a, b, "-n", "40"], ["corruption", b, a, "-n", "40"],
                 ["embedding", a, b, "-n", "40"], ["curves", a, b]):
        res = runner.invoke(app, ["analyze", *args, "-o", str(tmp_path)])
        assert res.exit_code == 0, (args, res.output)
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert set(data) == {"cam", "asc", "corruption", "embedding", "curves"}
    for name in ("cam", "asc", "corruption", "embedding", "curves"):
        png = tmp_path / f"{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 <= data["asc"]["share_a_greater"] <= 1 and len(data["asc"]["asc_a"]) == 40
    assert data["corruption"]["n_used"] <= 40 and set(data["embedding"]["runs"]) == {a, b}  # same folder name: full paths
    g = gaps(tiny_runs["again"])
    assert len(g["series"]["epoch"]) == 3
    assert g["final_robust_gap"] == pytest.approx(g["series"]["train_robust_acc"][-1] - g["series"]["test_robust_acc"][-1])
