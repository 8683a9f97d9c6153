import pytest
import torch

from againzoo.hff import HybridFeatureFusion, sample_gammas

EPS = 1e-5


def stats(a):  # hand-written per-sample, per-channel statistics over H, W
    mean = a.mean(dim=(2, 3), keepdim=True)
    std = ((a - mean) ** 2).mean(dim=(2, 3), keepdim=True).add(EPS).sqrt()
    return mean, std


def adain(content, style):
    cm, cs = stats(content)
    sm, ss = stats(style)
    return (content - cm) / cs * ss + sm


def reference_hff(a, perm, g):
    """Eq. 5-6 written out with explicit AdaIN passes (no closed forms)."""
    a2 = a[perm]
    a_1, a_2 = adain(a, a2), adain(a2, a)
    st = [stats(t) for t in (a, a2, a_1, a_2)]
    mu_hat = sum(g[i] * st[i][0] for i in range(4))
    sigma_hat = sum(g[i] * st[i][1] for i in range(4))
    return sigma_hat * (a - st[0][0]) / st[0][1] + mu_hat


def test_matches_hand_written_eq5_eq6():
    a = torch.randn(6, 5, 4, 4, dtype=torch.float64) * 3 + 1
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    g = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out = HybridFeatureFusion().train()(a, perm=perm, gammas=g)
    torch.testing.assert_close(out, reference_hff(a, perm, g), rtol=1e-10, atol=1e-10)


def test_per_sample_gammas_match_per_sample_reference():
    a = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    perm = torch.tensor([1, 2, 3, 0])
    g = sample_gammas(4, True, a.device, a.dtype)
    out = HybridFeatureFusion(per_sample=True).train()(a, perm=perm, gammas=g)
    for i in range(4):
        torch.testing.assert_close(out[i], reference_hff(a, perm, g[i])[i], rtol=1e-10, atol=1e-10)


def test_keeps_shape_and_changes_statistics_in_train_mode():
    a = torch.randn(8, 16, 6, 6) * torch.linspace(0.5, 3, 8).view(8, 1, 1, 1)
    out = HybridFeatureFusion().train()(a)
    assert out.shape == a.shape
    m_in, s_in = stats(a)
    m_out, s_out = stats(out)
    assert not torch.allclose(s_in, s_out, atol=1e-3)
    assert not torch.allclose(m_in, m_out, atol=1e-3)


def test_identity_in_eval_mode():
    a = torch.randn(4, 8, 3, 3)
    out = HybridFeatureFusion().eval()(a)
    assert torch.equal(out, a)


def test_gammas_on_simplex():
    g = sample_gammas(1000, True, torch.device("cpu"), torch.float32)
    assert (g >= 0).all()
    torch.testing.assert_close(g.sum(1), torch.ones(1000))
    # Dirichlet(1,1,1,1): each marginal has mean 1/4
    assert (g.mean(0) - 0.25).abs().max() < 0.03
    assert sample_gammas(3, False, torch.device("cpu"), torch.float32).shape == (4,)


@pytest.mark.parametrize("layout", ["NLC", "NHWC"])
def test_channels_last_layouts_equal_nchw(layout):
    a = torch.randn(5, 6, 3, 4, dtype=torch.float64)  # NCHW
    perm = torch.tensor([4, 2, 0, 1, 3])
    g = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    ref = HybridFeatureFusion("NCHW").train()(a, perm=perm, gammas=g)
    x = a.permute(0, 2, 3, 1)
    if layout == "NLC":
        x = x.reshape(5, 12, 6)
    out = HybridFeatureFusion(layout).train()(x, perm=perm, gammas=g)
    torch.testing.assert_close(out.reshape(5, 3, 4, 6).permute(0, 3, 1, 2), ref)


def test_stable_for_constant_features_and_single_position():
    const = torch.ones(4, 3, 2, 2)
    single = torch.randn(4, 3, 1, 1)
    for a in (const, single):
        out = HybridFeatureFusion().train()(a)
        assert torch.isfinite(out).all()


def test_gradient_flows():
    a = torch.randn(4, 3, 4, 4, requires_grad=True)
    HybridFeatureFusion().train()(a).square().sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
