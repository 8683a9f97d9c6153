"""A short adversarial fine-tune of a tiny AGAIN model on real CIFAR-10 images lowers Eq. 7."""

import torch

from againzoo.attacks import pgd
from againzoo.losses import joint_loss

from .conftest import tiny
import pytest

pytestmark = pytest.mark.slow  # fine-tuning on real images: the slow tier

EPS = 8 / 255


def adversarial_joint_loss(m, x, y):
    m.eval()
    gen = torch.Generator().manual_seed(0)
    loss_fn = lambda xa: joint_loss(*m(xa, return_aux=True), y, m.aux_weight, reduction="none")
    x_adv = pgd(loss_fn, x, EPS, 2 / 255, 5, generator=gen)
    with torch.no_grad():
        return float(loss_fn(x_adv).mean())


def test_adversarial_finetune_lowers_joint_loss(real_images):
    x, y = real_images[0][:64], real_images[1][:64]
    m = tiny()
    before = adversarial_joint_loss(m, x, y)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(40):
        m.eval()  # craft against the joint loss with BN in eval mode, as the official code
        x_adv = pgd(lambda xa: joint_loss(*m(xa, return_aux=True), y, reduction="none"), x, EPS, 2 / 255, 3)
        m.train()
        loss = joint_loss(*m(x_adv, targets=y, return_aux=True), y, m.aux_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = adversarial_joint_loss(m, x, y)
    assert after < 0.8 * before, (before, after)
