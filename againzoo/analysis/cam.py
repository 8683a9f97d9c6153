"""Class activation maps, AGAIN Eq. 1: ``M_c = sum_k w_k^c A_k``.

``A`` are the features at a layer (default: the last feature stage, the paper's "second last
layer") and ``w^c`` the class-``c`` row of the linear classifier that follows global average
pooling. For an :class:`~againzoo.adapter.AgainModel` there are two heads: the main head sees the
ASE-gated features, the ASE head the features before the gate. Where the layer is not followed by
GAP + Linear, CAM does not apply and :func:`cam` uses Grad-CAM (Selvaraju et al. 2017):
``M_c = ReLU(sum_k alpha_k^c A_k)`` with ``alpha_k^c`` the spatial mean of ``d y_c / d A_k``.

Whether CAM applies is checked numerically, not assumed: for GAP + Linear,
``logit_c = mean(M_c) + b_c`` must hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import AgainModel, default_layer
from ..factory import Normalized


@dataclass
class CamResult:
    maps: torch.Tensor  # (N, h, w) at feature resolution
    classes: torch.Tensor  # (N,) the class each map explains
    method: str  # "cam" or "grad-cam"
    head: str  # "main" or "ase"
    layer: str

    def upsampled(self, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, (AgainModel, Normalized)) else model


def _capture(model: nn.Module, layer: str, x: torch.Tensor, before_gate: bool, grad: bool):
    """Run the model, returning (logits, aux or None, features at ``layer``)."""
    module = dict(_backbone(model).named_modules())[layer]
    store: dict[str, torch.Tensor] = {}

    def hook(m, i, o):
        if grad:
            o.retain_grad()
        store["a"] = o

    # a prepended hook sees the raw layer output (before AGAIN's gate); an appended one sees the result
    h = module.register_forward_hook(hook, prepend=before_gate)
    try:
        with torch.set_grad_enabled(grad):
            if isinstance(model, AgainModel):
                logits, aux = model(x, return_aux=True)
            else:
                logits, aux = model(x), None
    finally:
        h.remove()
    return logits, aux, store["a"]


def _to_nchw(a: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "NCHW":
        return a
    if layout == "NHWC":
        return a.permute(0, 3, 1, 2)
    n, l, c = a.shape  # tokens: drop a class token if L is not a square
    side = int(round(l ** 0.5))
    if side * side != l:
        a = a[:, l - int(round((l - 1) ** 0.5)) ** 2:]
        side = int(round(a.shape[1] ** 0.5))
    return a.transpose(1, 2).reshape(n, c, side, side)


@torch.no_grad()
def _linear_cam(a: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for the given class per example: (N, C, h, w) x (K, C) -> (N, h, w)."""
    return torch.einsum("nchw,nc->nhw", a, weight[classes])


def cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None, layer: str | None = None,
        head: str = "main", method: str = "auto") -> CamResult:
    """CAM (Eq. 1) or Grad-CAM maps of ``classes`` (default: the predicted class) at ``layer``.

    ``head="ase"`` explains the ASE head of an AgainModel (features before the gate).
    ``method``: ``"auto"`` (CAM where it applies, else Grad-CAM), ``"cam"`` or ``"grad-cam"``.
    """
    model.eval()
    backbone = _backbone(model)
    if layer is None:
        # the primary AGAIN site (when it gates a module's output), else the last feature stage
        layer = (model.layer if isinstance(model, AgainModel) and ":" not in model.layer
                 else default_layer(backbone))
    if head == "ase" and not isinstance(model, AgainModel):
        raise ValueError("head='ase' needs an AgainModel")
    layout = model.layout if isinstance(model, AgainModel) else "NCHW"
    before_gate = head == "ase"
    grad_pass = method == "grad-cam"  # otherwise try CAM first, which needs no graph
    logits, aux, a = _capture(model, layer, x, before_gate, grad=grad_pass)
    if a.ndim == 3:
        layout = "NLC"
    out = aux if head == "ase" else logits
    if classes is None:
        classes = out.argmax(1)
    classes = classes.to(out.device)
    feats = _to_nchw(a, layout)
    if method in ("auto", "cam"):
        lin = model.ase.fc if head == "ase" else backbone.get_classifier()
        if isinstance(lin, nn.Linear) and lin.in_features == feats.shape[1]:
            maps = _linear_cam(feats, lin.weight, classes)
            bias = lin.bias[classes] if lin.bias is not None else 0.0
            explained = maps.flatten(1).mean(1) + bias
            target = out.gather(1, classes[:, None]).squeeze(1)
            if torch.allclose(explained, target, rtol=1e-3, atol=1e-3):
                return CamResult(maps, classes.cpu(), "cam", head, layer)
        if method == "cam":
            raise ValueError(f"CAM does not apply at layer {layer!r}: it is not followed by GAP + Linear")
    # Grad-CAM
    if not grad_pass:
        logits, aux, a = _capture(model, layer, x, before_gate, grad=True)
        out = aux if head == "ase" else logits
    score = out.gather(1, classes[:, None]).sum()
    (g,) = torch.autograd.grad(score, a)
    feats, g = _to_nchw(a.detach(), layout), _to_nchw(g, layout)
    alpha = g.mean(dim=(2, 3), keepdim=True)
    maps = F.relu((alpha * feats).sum(1))
    return CamResult(maps.detach(), classes.cpu(), "grad-cam", head, layer)
