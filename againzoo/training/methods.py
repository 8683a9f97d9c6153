"""Training methods as small plug-ins to one trainer.

A :class:`Method` has two parts: ``craft`` makes the adversarial batch, ``loss`` turns it into the
training loss. Under AGAIN (a batch the schedule selects), the forward passes apply HFF and the
label-mixed ASE gate, and both the attack and the loss carry the ASE term of Eq. 7,
``aux_weight * CE(aux_logits(x_adv), y)``.

* ``standard``: CE on clean data (no attack), the undefended baseline.
* ``pgd_at``: Madry et al. 2018, CE on PGD examples (Eq. 7 under AGAIN).
* ``fgsm_rs``: Wong et al. 2020, one signed step of 1.25 eps from a uniform random start.
* ``n_fgsm``: de Jorge et al. 2022, one signed step of ``step_size`` (default eps) from uniform noise
  of ``attack.noise`` (default 2 eps), **not** projected back to the eps ball: the single-step method
  that resists catastrophic overfitting without extra passes.
* ``trades``: Zhang et al. 2019, CE(f(x), y) + beta * KL(f(x) || f(x_adv)), the attack maximises the KL.
* ``mart``: Wang et al. 2020, boosted CE on x_adv + beta * KL(f(x) || f(x_adv)) * (1 - p_y(x)).

AWP (Wu et al. 2020) wraps any of pgd_at / trades / mart, see :mod:`againzoo.training.awp`.
Label smoothing (``method.label_smoothing``) smooths the CE terms of the training loss only
(TRADES: the natural CE; MART: the CE inside the boosted CE; the ASE term of Eq. 7), never the KL
terms, and never the attack's loss unless ``attack.label_smoothing`` asks for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import AgainModel
from ..attacks.pgd import pgd
from ..losses import Aux, aux_mean
from ..recipes import AttackSection

Logits = tuple[torch.Tensor, Aux]
# a method's loss: (loss, main logits, ASE logits or None) of the batch the update is computed on
LossOut = tuple[torch.Tensor, torch.Tensor, Aux]


@dataclass
class StepContext:
    """What a method needs for one batch."""

    model: nn.Module
    attack: AttackSection
    again: bool  # apply AGAIN to this batch
    aux_weight: float
    beta: float
    autocast: Callable[[], contextlib.AbstractContextManager]
    label_smoothing: float = 0.0  # of the training loss's CE terms (the attack's: attack.label_smoothing)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Logits:
        """Train-mode forward: ``(logits, aux_logits or None)``."""
        if isinstance(model, AgainModel):
            if self.again:
                return model(x, targets=y, return_aux=True, again=True)
            return model(x, again=False), None
        return model(x), None

    def aux_term(self, aux: Aux, y: torch.Tensor, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> torch.Tensor | float:
        """The ASE term of Eq. 7, ``aux_weight * CE(aux_logits, y)`` (the mean over the sites' heads);
        0 without AGAIN."""
        if aux is None or not self.aux_weight:
            return 0.0
        return self.aux_weight * aux_mean(aux, lambda a: F.cross_entropy(a.float(), y, reduction=reduction,
                                                                          label_smoothing=label_smoothing))

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """BN (and, for AGAIN, the gate) in eval or train mode while crafting, restored after."""
        was = self.model.training
        self.model.train(self.attack.bn_mode == "train")
        try:
            yield
        finally:
            self.model.train(was)

    def attack_forward(self, x: torch.Tensor, y: torch.Tensor) -> Logits:
        m = self.model
        if isinstance(m, AgainModel) and not m.training:
            return m(x, return_aux=True, again=self.again) if self.again else (m(x, again=False), None)
        return self.forward(m, x, y)

    def craft(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
              steps: int | None = None, step_size: float | None = None, init: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attack
        steps = steps or a.steps
        step_size = step_size or a.step_size or (2.5 * a.eps / steps)
        with self.attack_mode(), self.autocast():
            return pgd(loss_fn, x, a.eps, step_size, steps, a.norm, a.random_start, init=init)


def _ce_attack_loss(ctx: StepContext, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    ls = ctx.attack.label_smoothing

    def loss(xa: torch.Tensor) -> torch.Tensor:
        logits, aux = ctx.attack_forward(xa, y)
        return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=ls) + ctx.aux_term(aux, y, "none", ls)
    return loss


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(softmax(p) || softmax(q))."""
    return F.kl_div(F.log_softmax(q_logits.float(), 1), F.softmax(p_logits.float(), 1), reduction="none").sum(1)


# -- methods -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    name: str
    craft: Callable[[StepContext, torch.Tensor, torch.Tensor], torch.Tensor | None]
    loss: Callable[[StepContext, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], LossOut]
    default_beta: float = 0.0


def _no_attack(ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> None:
    return None


def _pgd_craft(ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ctx.craft(x, _ce_attack_loss(ctx, y))


def _fgsm_craft(ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ctx.craft(x, _ce_attack_loss(ctx, y), steps=1, step_size=ctx.attack.step_size or 1.25 * ctx.attack.eps)


def _n_fgsm_craft(ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + eta + step * sign(grad) with eta ~ U[-noise, noise], clipped to the image range only."""
    a = ctx.attack
    noise = a.noise if a.noise is not None else 2 * a.eps
    loss_fn = _ce_attack_loss(ctx, y)
    with ctx.attack_mode(), ctx.autocast():
        x_noisy = (x + (torch.rand_like(x) * 2 - 1) * noise).clamp(0, 1).requires_grad_(True)
        with torch.enable_grad():
            grad = torch.autograd.grad(loss_fn(x_noisy).sum(), x_noisy)[0]
    return (x_noisy.detach() + (a.step_size or a.eps) * grad.sign()).clamp(0, 1)


def _ce_loss(ctx: StepContext, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None):
    logits, aux = ctx.forward(model, x if x_adv is None else x_adv, y)
    ls = ctx.label_smoothing
    return F.cross_entropy(logits.float(), y, label_smoothing=ls) + ctx.aux_term(aux, y, label_smoothing=ls), logits, aux


def _trades_craft(ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with ctx.attack_mode(), torch.no_grad(), ctx.autocast():
        nat_logits = ctx.attack_forward(x, y)[0].detach()

    def loss(xa: torch.Tensor) -> torch.Tensor:
        logits, aux = ctx.attack_forward(xa, y)
        return _kl(nat_logits, logits) + ctx.aux_term(aux, y, "none")

    init = 0.001 * torch.randn_like(x)  # TRADES starts from small Gaussian noise
    return ctx.craft(x, loss, init=init)


def trades_loss(nat_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """TRADES: CE(f(x), y) + beta * mean KL(softmax f(x) || softmax f(x_adv)).

    Label smoothing applies to the natural CE only; the KL term is unchanged."""
    return F.cross_entropy(nat_logits.float(), y, label_smoothing=label_smoothing) + beta * _kl(nat_logits, adv_logits).mean()


def mart_loss(nat_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """MART: BCE(f(x_adv), y) + beta * mean(KL(p(x) || p(x_adv)) * (1 - p_y(x))).

    BCE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)). Label smoothing applies to the CE
    inside BCE only; the margin term and the weighted KL are unchanged.
    """
    adv_probs = F.softmax(adv_logits.float(), 1)
    top2 = adv_probs.argsort(1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(adv_logits.float(), y, label_smoothing=label_smoothing) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), other)
    nat_probs = F.softmax(nat_logits.float(), 1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    return bce + beta * (_kl(nat_logits, adv_logits) * (1.0000001 - true_probs)).mean()


def _pair_loss(fn: Callable[..., torch.Tensor]):
    def loss(ctx: StepContext, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None):
        nat_logits, _ = ctx.forward(model, x, y)
        adv_logits, aux = ctx.forward(model, x_adv, y)
        ls = ctx.label_smoothing
        return fn(nat_logits, adv_logits, y, ctx.beta, ls) + ctx.aux_term(aux, y, label_smoothing=ls), adv_logits, aux
    return loss


METHODS: dict[str, Method] = {
    "standard": Method("standard", _no_attack, _ce_loss),
    "pgd_at": Method("pgd_at", _pgd_craft, _ce_loss),
    "fgsm_rs": Method("fgsm_rs", _fgsm_craft, _ce_loss),
    "n_fgsm": Method("n_fgsm", _n_fgsm_craft, _ce_loss),
    "trades": Method("trades", _trades_craft, _pair_loss(trades_loss), default_beta=6.0),
    "mart": Method("mart", _pgd_craft, _pair_loss(mart_loss), default_beta=6.0),
}
