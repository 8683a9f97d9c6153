"""Adversarial Weight Perturbation (Wu et al. 2020), wrapped around any method's loss.

Per step: copy the weights into a proxy, take one ascent step of the method's loss on the proxy,
and perturb every weight tensor of the model (matrices and kernels, not BN or biases) by
``gamma * ||w|| * d / ||d||`` with ``d = w_proxy - w``; the optimiser step is computed and applied
at the perturbed point, then the perturbation is removed. Under data parallelism the proxy's ascent step uses the gradients
averaged over the ranks, so every rank applies the same perturbation.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import average_gradients
from .methods import Method, StepContext

EPS = 1e-20


class AWP:
    def __init__(self, model: nn.Module, proxy: nn.Module, gamma: float, proxy_lr: float,
                 distributed: bool = False):
        self.model, self.proxy, self.gamma = model, proxy, gamma
        self.distributed = distributed
        self.proxy_opt = torch.optim.SGD(proxy.parameters(), lr=proxy_lr)
        self.names = [n for n, p in model.named_parameters() if p.ndim > 1 and n.endswith("weight")]

    def perturbation(self, ctx: StepContext, method: Method, x: torch.Tensor, y: torch.Tensor,
                     x_adv: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The weight perturbation for this batch (not yet applied)."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        with ctx.autocast():
            loss = method.loss(ctx, self.proxy, x, y, x_adv)[0]
        self.proxy_opt.zero_grad(set_to_none=True)
        (-loss).backward()
        if self.distributed:
            average_gradients(self.proxy)
        self.proxy_opt.step()
        own = dict(self.model.named_parameters())
        prox = dict(self.proxy.named_parameters())
        diff = {}
        with torch.no_grad():
            for n in self.names:
                d = prox[n] - own[n]
                diff[n] = self.gamma * own[n].norm() / (d.norm() + EPS) * d
        return diff

    @torch.no_grad()
    def apply(self, diff: dict[str, torch.Tensor], sign: float = 1.0) -> None:
        params = dict(self.model.named_parameters())
        for n, d in diff.items():
            params[n].add_(sign * d)
