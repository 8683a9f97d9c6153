"""Hybrid Feature Fusion (HFF), AGAIN section 4.2, Eq. 5-6.

For features ``A`` of a batch and a within-batch shuffle ``A' = A[perm]``::

    A1 = AdaIN(A, A'),  A2 = AdaIN(A', A)
    mu_hat    = g1 mu(A)    + g2 mu(A')    + g3 mu(A1)    + g4 mu(A2)        (Eq. 5)
    sigma_hat = g1 sigma(A) + g2 sigma(A') + g3 sigma(A1) + g4 sigma(A2)
    HFF(A)    = sigma_hat * (A - mu(A)) / sigma(A) + mu_hat                   (Eq. 6)

Statistics are per sample and per channel, over the spatial (or token) positions, with the
population variance plus ``eps`` under the square root (stable for a single position).
The gammas are a Dirichlet(1, 1, 1, 1) draw: uniform on the simplex, which is what the official
code's sorted-uniform stick breaking gives. One draw per batch by default (as the official
code), or one per sample with ``per_sample=True``.

The statistics of the two AdaIN crossings have a closed form, used here instead of a second pass
over the feature map: ``mu(AdaIN(a, b)) = mu(b)`` and
``var(AdaIN(a, b)) = sigma(b)^2 * var(a) / sigma(a)^2``.

HFF is a training-time augmentation: in eval mode it is exactly the identity.
"""

from __future__ import annotations

import torch
from torch import nn

LAYOUTS = ("NCHW", "NHWC", "NLC")


def reduce_dims(x: torch.Tensor, layout: str) -> tuple[int, ...]:
    """The dimensions that hold positions (not batch, not channels) for ``layout``."""
    if layout == "NCHW":
        return tuple(range(2, x.ndim))
    return tuple(range(1, x.ndim - 1))


def channel_stats(
    x: torch.Tensor, layout: str = "NCHW", eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean, population variance and eps-stable std, kept broadcastable."""
    dims = reduce_dims(x, layout)
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return mean, var, torch.sqrt(var + eps)


def sample_gammas(batch: int, per_sample: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Dirichlet(1,1,1,1) weights, shape (4,) or (batch, 4): non-negative, summing to one."""
    shape = (batch, 4) if per_sample else (4,)
    e = -torch.log(torch.rand(shape, device=device, dtype=torch.float32).clamp_min(1e-12))
    return (e / e.sum(dim=-1, keepdim=True)).to(dtype)


class HybridFeatureFusion(nn.Module):
    """Eq. 5-6 as a module; identity in eval mode.

    Args:
        layout: ``"NCHW"`` (conv feature maps), ``"NHWC"`` or ``"NLC"`` (tokens).
        eps: added to the variance before the square root.
        per_sample: draw one set of gammas per sample instead of one per batch.
    """

    def __init__(self, layout: str = "NCHW", eps: float = 1e-5, per_sample: bool = False):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.eps = eps
        self.per_sample = per_sample

    def forward(
        self,
        x: torch.Tensor,
        perm: torch.Tensor | None = None,
        gammas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.training:
            return x
        n = x.shape[0]
        if perm is None:
            perm = torch.randperm(n, device=x.device)
        if gammas is None:
            gammas = sample_gammas(n, self.per_sample, x.device, x.dtype)
        mu, var, sigma = channel_stats(x, self.layout, self.eps)
        mu_p, var_p, sigma_p = mu[perm], var[perm], sigma[perm]
        # closed-form statistics of A1 = AdaIN(A, A') and A2 = AdaIN(A', A)
        sigma_1 = torch.sqrt(sigma_p.square() * var / sigma.square() + self.eps)
        sigma_2 = torch.sqrt(sigma.square() * var_p / sigma_p.square() + self.eps)
        g = gammas.reshape((-1, 4) + (1,) * (x.ndim - 1)) if gammas.ndim == 2 else gammas
        g1, g2, g3, g4 = (g[:, i] if gammas.ndim == 2 else g[i] for i in range(4))
        mu_hat = (g1 + g4) * mu + (g2 + g3) * mu_p
        sigma_hat = g1 * sigma + g2 * sigma_p + g3 * sigma_1 + g4 * sigma_2
        return sigma_hat * (x - mu) / sigma + mu_hat

    def extra_repr(self) -> str:
        return f"layout={self.layout}, eps={self.eps}, per_sample={self.per_sample}"
