"""AgainModel: AGAIN on any timm backbone through forward hooks (AGAIN Fig. 2, Eq. 4-6).

A forward hook on one module of the backbone (default: the last ``feature_info`` entry, i.e.
the last feature stage, the paper's "second last layer") replaces that module's output ``A`` by
``ASE(HFF(A))``. The backbone's code and ``state_dict`` keys are untouched; ``unwrap()`` removes
the hook and returns the backbone as it was.

Contract (see DESIGN.md):

* ``model(x)`` takes float images in [0, 1], NCHW, and returns a logits Tensor.
  Normalisation happens inside (the backbone's own, or ``pretrained_cfg`` mean/std).
* ``model(x, targets=y)`` in train mode applies HFF and the label-mixed ASE gate.
* ``model(x, ..., return_aux=True)`` returns ``(logits, aux_logits)``.
* ``model(x, ..., again=False)`` runs that call without HFF and the gate (the progressive
  schedule of section 4.3); the aux logits are still computed from the unmodified features.
* eval mode is deterministic: HFF is off and the gate uses the ASE head's predicted class.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .ase import GATES, AttributionSpanEnlargement
from .errors import ConfigError, ShapeError, UsageError
from .hff import LAYOUTS, HybridFeatureFusion
from .models._base import buffer_stats, input_stats, inside_normalized, model_stats

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def backbone_cfg(backbone: nn.Module) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` of a backbone (empty dict when it has none)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or getattr(backbone, "default_cfg", None) or {}
    return dict(cfg)


def default_layer(backbone: nn.Module) -> str:
    """Module name of the last feature stage, from timm's ``feature_info``."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ConfigError(
            f"{type(backbone).__name__} has no feature_info; pass layer=<module name> explicitly"
        )
    last = info[-1]
    return last["module"] if isinstance(last, dict) else info.get_dicts()[-1]["module"]


def _tracing() -> bool:
    """Inside torch.compile / torch.export / ONNX export: no data-dependent checks."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


class AgainModel(nn.Module):
    """A timm classifier wrapped with AGAIN's HFF and ASE at one layer.

    Args:
        backbone: any timm classification model (``feature_info``, ``num_classes``).
        layer: module name to hook; default the last ``feature_info`` entry.
        alpha: ASE's weight on the true label in training, in [0.5, 1] (paper: 0.6).
        hff: apply Hybrid Feature Fusion before ASE in training.
        aux_weight: lambda of Eq. 7, stored for the losses and the config.
        layout: channel layout of the hooked output (``"NCHW"``, ``"NHWC"``, ``"NLC"``);
            inferred from a dry run when omitted.
        per_sample_gammas: HFF draws gammas per sample instead of per batch.
        input_size: (C, H, W) of the dry run that finds the hooked features' shape; default the
            backbone's own (``patch_embed.img_size`` or ``pretrained_cfg['input_size']``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        layer: str | None = None,
        alpha: float = 0.6,
        hff: bool = True,
        aux_weight: float = 1.0,
        layout: str | None = None,
        per_sample_gammas: bool = False,
        input_size: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        if not 0.5 <= float(alpha) <= 1.0:
            raise ConfigError(f"alpha must be in [0.5, 1] (the paper's range), got {alpha}")
        if aux_weight < 0:
            raise ConfigError(f"aux_weight must be >= 0, got {aux_weight}")
        self.backbone = backbone
        self.layer = layer if layer is not None else default_layer(backbone)
        modules = dict(backbone.named_modules())
        if self.layer not in modules or self.layer == "":
            valid = [n for n in modules if n]
            raise ConfigError(f"unknown layer {self.layer!r}; valid module names: {', '.join(valid)}")
        self.alpha = float(alpha)
        self.use_hff = bool(hff)
        self.aux_weight = float(aux_weight)
        self.num_classes = int(backbone.num_classes)
        cfg = backbone_cfg(backbone)
        self.input_size = tuple(input_size or self._native_input_size(backbone, cfg))
        self.in_chans = int(self.input_size[0])
        self._has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        self.normalize_input = not getattr(backbone, "normalizes_input", False)
        mean, std = model_stats(cfg, self.in_chans)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

        shape = self._probe_shape(modules[self.layer])
        self.layout = layout or self._infer_layout(shape, self.layer)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        num_features = shape[1] if self.layout == "NCHW" else shape[-1]
        self.num_features = int(num_features)
        self.hff = HybridFeatureFusion(layout=self.layout, per_sample=per_sample_gammas)
        self.ase = AttributionSpanEnlargement(self.num_features, self.num_classes, alpha, self.layout)

        self._cfg: dict[str, Any] | None = None  # set by timm's builder for the again_* entries
        self._call: dict[str, Any] = {}
        self._aux: torch.Tensor | None = None
        self.gate = "hard"
        self._handle = modules[self.layer].register_forward_hook(self._hook)

    # -- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _native_input_size(backbone: nn.Module, cfg: dict[str, Any]) -> tuple[int, ...]:
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        img_size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
        if img_size is not None:  # ViT-style models built with img_size=... keep the cfg's default
            size = (size[0],) + tuple(img_size)
        return size

    def _probe_shape(self, module: nn.Module) -> tuple[int, ...]:
        seen: list[tuple[int, ...]] = []
        handle = module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            p = next(self.backbone.parameters(), None)
            dev = p.device if p is not None else torch.device("cpu")
            with torch.no_grad():
                self.backbone(torch.zeros((2,) + self.input_size, device=dev))
        except RuntimeError as e:
            raise ConfigError(f"dry run at input size {self.input_size} failed ({e}); pass input_size=(C, H, W)") from e
        finally:
            handle.remove()
            self.backbone.train(was_training)
        if not seen:
            raise ConfigError(f"layer {self.layer!r} is not used in the backbone's forward pass")
        return seen[-1]

    def _infer_layout(self, shape: tuple[int, ...], layer: str) -> str:
        if len(shape) == 3:
            return "NLC"
        if len(shape) != 4:
            raise ConfigError(f"layer {layer!r} outputs rank-{len(shape)} features; expected 3 (NLC) or 4")
        info = {d["module"]: d for d in (getattr(self.backbone, "feature_info", None) or [])
                if isinstance(d, dict)}
        chs = info.get(layer, {}).get("num_chs")
        if chs is not None and shape[1] != chs and shape[-1] == chs:
            return "NHWC"
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC" and shape[1] != shape[-1]:
            return "NHWC"
        return "NCHW"

    # -- the hook -------------------------------------------------------------------------
    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ShapeError(f"layer {self.layer!r} returned {type(output).__name__}; AGAIN needs a Tensor")
        call = self._call
        if not call.get("again", True):
            self._aux = self.ase.fc(self.ase.pool(output))
            return output
        if self.training and self.use_hff:
            output = self.hff(output)
        gated, self._aux = self.ase(output, targets=call.get("targets"), gate=self.gate)
        return gated

    # -- public API -------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ShapeError` unless ``x`` is a float (N, C, H, W) batch with C channels."""
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"expected float images in [0, 1], got dtype {x.dtype}")
        if x.ndim != 4:
            raise ShapeError(f"expected a 4-D batch (N, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ShapeError(f"expected {self.in_chans} channels (N, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeError(f"empty batch: got shape {tuple(x.shape)}")
        if not self.training and not x.requires_grad and not _tracing():
            # values at inference (one reduction, one host sync); attacks and training pass tensors that
            # require grad or run in train mode, and skip it
            lo, hi = torch.aminmax(x.detach().float())
            lo, hi = float(lo), float(hi)
            if lo != lo or hi != hi:
                raise ShapeError("the batch contains NaN: expected float images in [0, 1]")
            if abs(lo) == float("inf") or abs(hi) == float("inf"):
                raise ShapeError("the batch contains inf: expected float images in [0, 1]")
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ShapeError(f"expected float images in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                                 "(divide uint8 pixels by 255; the model normalises inside)")

    def check_targets(self, x: torch.Tensor, targets: torch.Tensor, values: bool = True) -> None:
        """Raise :class:`ShapeError` unless ``targets`` are (N,) integer labels in [0, num_classes)
        (``values=False``: the shape only, no host sync)."""
        if targets.shape != (x.shape[0],):
            raise ShapeError(f"expected targets of shape ({x.shape[0]},), got {tuple(targets.shape)}")
        if not values:
            return
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ShapeError(f"expected integer class labels, got dtype {targets.dtype}")
        lo, hi = torch.aminmax(targets)
        if int(lo) < 0 or int(hi) >= self.num_classes:
            raise ShapeError(f"labels must be in [0, {self.num_classes}), got values in [{int(lo)}, {int(hi)}]")

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        return_aux: bool = False,
        again: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self._handle is None:
            raise RuntimeError("this AgainModel was unwrapped; use the returned backbone")
        self.check_input(x)
        if self.training and again and targets is None:
            raise UsageError(
                "AgainModel in train mode needs targets for the ASE label mix: call model(x, targets=y), "
                "or model(x, again=False) for a plain forward"
            )
        if self.training and x.shape[0] == 1 and self._has_batchnorm:
            raise ShapeError("a train-mode batch needs at least 2 images (BatchNorm); call model.eval() "
                             "to classify one image")
        if targets is not None:  # the labels index the ASE weights in training: check their values there
            self.check_targets(x, targets, values=self.training)
        if self.normalize_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        self._call = {"targets": targets if self.training else None, "again": again}
        try:
            logits = self.backbone(x)
        finally:
            self._call = {}
        aux, self._aux = self._aux, None
        return (logits, aux) if return_aux else logits

    @contextlib.contextmanager
    def gate_mode(self, gate: str) -> Iterator["AgainModel"]:
        """Temporarily select the backward rule of the inference gate (``"straight_through"``)."""
        if gate not in GATES:
            raise ConfigError(f"gate must be one of {GATES}, got {gate!r}")
        previous, self.gate = self.gate, gate
        try:
            yield self
        finally:
            self.gate = previous

    def again_config(self) -> dict[str, Any]:
        """The AGAIN options, as stored in ``config.json``."""
        return {"layer": self.layer, "alpha": self.alpha, "hff": self.use_hff,
                "aux_weight": self.aux_weight, "layout": self.layout,
                "per_sample_gammas": self.hff.per_sample}

    def unwrap(self) -> nn.Module:
        """Remove the hook and return the untouched backbone; this wrapper becomes unusable."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return self.backbone

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The cfg timm's data pipeline reads: this model normalises inside, so identity mean/std (the
        again_* entries' own cfg, else the backbone's, re-stated when this wrapper normalises)."""
        if self._cfg is not None:
            return self._cfg
        cfg = backbone_cfg(self.backbone)
        if not self.normalize_input:
            return cfg  # the backbone normalises itself and says so already
        return inside_normalized(cfg, *model_stats(cfg, self.in_chans))

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict[str, Any]) -> None:
        self._cfg = dict(cfg)

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean/std applied to [0, 1] inputs inside the model."""
        if self.normalize_input:
            return buffer_stats(self)
        return input_stats(self.backbone)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, num_features={self.num_features}, aux_weight={self.aux_weight}"
