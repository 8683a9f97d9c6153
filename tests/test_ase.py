import pytest
import torch

from againzoo.ase import AttributionSpanEnlargement


def head(c=6, k=4, alpha=0.6, layout="NCHW"):
    ase = AttributionSpanEnlargement(c, k, alpha, layout)
    with torch.no_grad():
        ase.fc.weight.copy_(torch.arange(k * c, dtype=torch.float32).view(k, c) / 10 - 1)
        ase.fc.bias.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0])[:k])
    return ase


def test_train_output_is_label_mixed_gate():
    ase = head().train()
    a = torch.randn(3, 6, 2, 2)
    y, y_fake = torch.tensor([0, 2, 3]), torch.tensor([1, 0, 3])
    out, aux = ase(a, targets=y, fake_targets=y_fake)
    w = ase.fc.weight.detach()
    expected = torch.stack([a[i] * (0.6 * w[y[i]] + 0.4 * w[y_fake[i]]).view(6, 1, 1) for i in range(3)])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(aux, a.mean(dim=(2, 3)) @ w.T + ase.fc.bias)


def test_train_default_fake_labels_are_a_shuffle():
    torch.manual_seed(1)
    ase = head(alpha=0.5).train()
    a = torch.ones(4, 6, 1, 1)
    y = torch.tensor([0, 1, 2, 3])
    out, _ = ase(a, targets=y)
    w = ase.fc.weight.detach()
    # each output is 0.5 * (W[y] + W[y']) with y' a permutation of y
    fake = (2 * out.view(4, 6) - w[y])
    matches = [int(torch.cdist(fake[i:i + 1], w).argmin()) for i in range(4)]
    assert sorted(matches) == [0, 1, 2, 3]


def test_eval_output_uses_predicted_class_weights():
    ase = head().eval()
    a = torch.randn(5, 6, 3, 3)
    out, aux = ase(a)
    w = ase.fc.weight.detach()
    pred = (a.mean(dim=(2, 3)) @ w.T + ase.fc.bias).argmax(1)
    expected = torch.stack([a[i] * w[pred[i]].view(6, 1, 1) for i in range(5)])
    torch.testing.assert_close(out, expected)
    out2, _ = ase(a)
    assert torch.equal(out, out2)  # never random at inference


def test_eval_ignores_targets_and_token_layout():
    ase = head(layout="NLC").eval()
    a = torch.randn(2, 7, 6)
    out, aux = ase(a, targets=torch.tensor([0, 1]))
    w = ase.fc.weight.detach()
    pred = aux.argmax(1)
    torch.testing.assert_close(out, a * w[pred].unsqueeze(1))


def test_straight_through_gate_forward_is_hard_backward_is_soft():
    ase = head().eval()
    a = torch.randn(4, 6, 2, 2, requires_grad=True)
    hard, _ = ase(a)
    st, aux = ase(a, gate="straight_through")
    torch.testing.assert_close(st, hard)
    g_st = torch.autograd.grad(st.sum(), a)[0]
    g_hard = torch.autograd.grad(ase(a)[0].sum(), a)[0]
    assert not torch.allclose(g_st, g_hard)  # the gate now passes a gradient


@pytest.mark.parametrize("alpha", [0.49, 1.01, -1.0])
def test_alpha_out_of_range_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0.5, 1\]"):
        AttributionSpanEnlargement(4, 3, alpha)


def test_train_mode_needs_targets():
    with pytest.raises(ValueError, match="targets"):
        head().train()(torch.randn(2, 6, 1, 1))
