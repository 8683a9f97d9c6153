"""AgainModel: AGAIN on any timm backbone through forward hooks (AGAIN Fig. 2, Eq. 4-6).

A forward hook on one module of the backbone (default: the last ``feature_info`` entry, i.e.
the last feature stage, the paper's "second last layer") replaces that module's output ``A`` by
``ASE(HFF(A))``; more sites, and sites at a module's input (a pre-hook: ``"layer4.1.conv1:input"``
gates the residual branch of the last block, the authors' code's inner site), each get their own
ASE head. The backbone's code and ``state_dict`` keys are untouched; ``unwrap()`` removes the
hooks and returns the backbone as it was.

Contract (see DESIGN.md):

* ``model(x)`` takes float images in [0, 1], NCHW, and returns a logits Tensor.
  Normalisation happens inside (the backbone's own, or ``pretrained_cfg`` mean/std).
* ``model(x, targets=y)`` in train mode applies HFF and the training gate (the label-mixed gate
  of Eq. 4 by default; ``gate_source="pred"``/``"soft"`` read no labels, see :mod:`againzoo.ase`).
* ``model(x, ..., return_aux=True)`` returns ``(logits, aux_logits)`` (a tuple of aux logits, one
  per site, when there are several).
* ``model(x, ..., again=False)`` runs that call without HFF and the gate (the progressive
  schedule of section 4.3); the aux logits are still computed from the unmodified features.
* eval mode is deterministic: HFF is off and the gate uses the ASE head's predicted class (its
  softmax for ``gate_source="soft"``); ``force_gate=c`` imposes the rows of classes ``c``.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Iterator

import torch
from torch import nn

from .ase import GATES, SOURCES, AttributionSpanEnlargement
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


def last_branch_site(backbone: nn.Module) -> str:
    """``"<block>.<first conv>:input"`` of the backbone's last block: the block holding the last
    convolution (the nearest ancestor with at least two), gated at the input of its first
    convolution. In a residual block that is the residual branch, the shortcut untouched
    (``resnet18_cifar``: ``layer4.1.conv1:input``; ``wrn34_10``: ``block3.4.conv1:input``, after the
    block's BN + ReLU, as in the authors' code)."""
    convs = [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(backbone).__name__} has no convolutions: name the AGAIN sites explicitly")
    parts = convs[-1].split(".")
    for k in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:k]) + "."
        inside = [c for c in convs if c.startswith(prefix)]
        if len(inside) >= 2:
            return f"{inside[0]}:input"
    return f"{convs[-1]}:input"


SITE_ALIASES = {"last_stage": default_layer, "last_branch": last_branch_site}


def parse_site(site: str) -> tuple[str, str]:
    """``"layer4"`` -> ``("layer4", "output")``; ``"layer4.1.conv1:input"`` -> ``("layer4.1.conv1", "input")``."""
    name, _, at = str(site).partition(":")
    at = at or "output"
    if at not in ("input", "output") or not name:
        raise ConfigError(f"an AGAIN site is a module name, optionally with ':input' or ':output', got {site!r}")
    return name, at


class AgainModel(nn.Module):
    """A timm classifier wrapped with AGAIN's HFF and ASE at one or more sites.

    Args:
        backbone: any timm classification model (``feature_info``, ``num_classes``).
        layer: the site to hook, or a list of sites (each with its own ASE head); default the
            last ``feature_info`` entry. A site is a module name (its output is gated) or
            ``"<module>:input"`` (its input is gated: ``"layer4.1.conv1:input"`` gates the residual
            branch of the last block and leaves the shortcut untouched, the authors' code's inner
            site). Aliases: ``"last_stage"`` (the default) and ``"last_branch"``
            (:func:`last_branch_site`). The last site is the primary one (``ase``, CAMs, diagnostics).
        alpha: weight of the gate's main row in training, in [0.5, 1] (paper: 0.6).
        hff: apply Hybrid Feature Fusion before ASE in training (at every site).
        aux_weight: lambda of Eq. 7, the weight of the ASE term (the mean over the sites' heads).
        layout: channel layout of the hooked tensors (``"NCHW"``, ``"NHWC"``, ``"NLC"``), one for all
            sites or a list; inferred from a dry run when omitted.
        per_sample_gammas: HFF draws gammas per sample instead of per batch.
        input_size: (C, H, W) of the dry run that finds the hooked features' shape; default the
            backbone's own (``patch_embed.img_size`` or ``pretrained_cfg['input_size']``).
        gate_source: the training gate, ``"label"`` (Eq. 4, the paper), ``"pred"`` or ``"soft"``
            (label-free, see :mod:`againzoo.ase`).
        detach_gate: the gate rows get no gradient from the main loss (only from the ASE term).
    """

    def __init__(
        self,
        backbone: nn.Module,
        layer: str | list[str] | tuple[str, ...] | None = None,
        alpha: float = 0.6,
        hff: bool = True,
        aux_weight: float = 1.0,
        layout: str | list[str] | tuple[str, ...] | None = None,
        per_sample_gammas: bool = False,
        input_size: tuple[int, int, int] | None = None,
        gate_source: str = "label",
        detach_gate: bool = False,
    ):
        super().__init__()
        if not 0.5 <= float(alpha) <= 1.0:
            raise ConfigError(f"alpha must be in [0.5, 1] (the paper's range), got {alpha}")
        if aux_weight < 0:
            raise ConfigError(f"aux_weight must be >= 0, got {aux_weight}")
        if gate_source not in SOURCES:
            raise ConfigError(f"gate_source must be one of {', '.join(SOURCES)}, got {gate_source!r}")
        self.backbone = backbone
        sites = [layer] if isinstance(layer, str) or layer is None else list(layer)
        if not sites:
            raise ConfigError("layer: give at least one AGAIN site")
        sites = [SITE_ALIASES[s](backbone) if s in SITE_ALIASES else s
                 for s in (default_layer(backbone) if s is None else s for s in sites)]
        parsed = [parse_site(s) for s in sites]
        if len(set(parsed)) != len(parsed):
            raise ConfigError(f"layer: the AGAIN sites {sites} name one site twice")
        modules = dict(backbone.named_modules())
        for name, _ in parsed:
            if name not in modules or name == "":
                valid = [n for n in modules if n]
                raise ConfigError(f"unknown layer {name!r}; valid module names: {', '.join(valid)}")
        self.sites = [name if at == "output" else f"{name}:{at}" for name, at in parsed]
        self.layer = self.sites[-1]
        self.alpha = float(alpha)
        self.use_hff = bool(hff)
        self.aux_weight = float(aux_weight)
        self.gate_source = gate_source
        self.detach_gate = bool(detach_gate)
        self.num_classes = int(backbone.num_classes)
        cfg = backbone_cfg(backbone)
        self.input_size = tuple(input_size or self._native_input_size(backbone, cfg))
        self.in_chans = int(self.input_size[0])
        self._has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        self.normalize_input = not getattr(backbone, "normalizes_input", False)
        mean, std = model_stats(cfg, self.in_chans)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

        shapes = self._probe_shapes([(modules[name], at) for name, at in parsed])
        layouts = [layout] * len(parsed) if layout is None or isinstance(layout, str) else list(layout)
        if len(layouts) != len(parsed):
            raise ConfigError(f"layout: {len(layouts)} layouts for {len(parsed)} sites")
        layouts = [lay or self._infer_layout(shape, name) for lay, shape, (name, _) in zip(layouts, shapes, parsed)]
        for lay in layouts:
            if lay not in LAYOUTS:
                raise ConfigError(f"layout must be one of {LAYOUTS}, got {lay!r}")
        self.layouts = layouts
        self.layout = layouts[-1]
        features = [int(shape[1] if lay == "NCHW" else shape[-1]) for shape, lay in zip(shapes, layouts)]
        self.num_features = features[-1]

        def head(c: int, lay: str) -> AttributionSpanEnlargement:
            return AttributionSpanEnlargement(c, self.num_classes, alpha, lay, gate_source, detach_gate)

        # the primary (last) site keeps the names of the one-site model (ase.fc.*: old checkpoints load)
        self.hff = HybridFeatureFusion(layout=self.layout, per_sample=per_sample_gammas)
        self.ase = head(self.num_features, self.layout)
        self.hff_extra = nn.ModuleList(HybridFeatureFusion(layout=lay, per_sample=per_sample_gammas)
                                       for lay in layouts[:-1])
        self.ase_extra = nn.ModuleList(head(c, lay) for c, lay in zip(features[:-1], layouts[:-1]))

        self._cfg: dict[str, Any] | None = None  # set by timm's builder for the again_* entries
        self._call: dict[str, Any] = {}
        self._aux: list[torch.Tensor | None] = [None] * len(parsed)
        self.gate = "hard"
        # value checks of inputs and labels (one host sync each); the trainer, whose data it has checked
        # once, turns them off so that no training step waits for the device
        self.validate_values = True
        self._recomputing = False
        self._handles: list[Any] | None = []
        for k, (name, at) in enumerate(parsed):
            if at == "output":
                self._handles.append(modules[name].register_forward_hook(partial(self._hook, k)))
            else:
                self._handles.append(modules[name].register_forward_pre_hook(partial(self._pre_hook, k)))

    # -- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _native_input_size(backbone: nn.Module, cfg: dict[str, Any]) -> tuple[int, ...]:
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        img_size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
        if img_size is not None:  # ViT-style models built with img_size=... keep the cfg's default
            size = (size[0],) + tuple(img_size)
        return size

    def _probe_shapes(self, where: list[tuple[nn.Module, str]]) -> list[tuple[int, ...]]:
        seen: list[list[tuple[int, ...]]] = [[] for _ in where]
        handles = []
        for k, (module, at) in enumerate(where):
            if at == "output":
                handles.append(module.register_forward_hook(lambda m, i, o, k=k: seen[k].append(tuple(o.shape))))
            else:
                handles.append(module.register_forward_pre_hook(lambda m, i, k=k: seen[k].append(tuple(i[0].shape))))
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
            for h in handles:
                h.remove()
            self.backbone.train(was_training)
        for s, site in zip(seen, self.sites):
            if not s:
                raise ConfigError(f"layer {site!r} is not used in the backbone's forward pass")
        return [s[-1] for s in seen]

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

    # -- the hooks ------------------------------------------------------------------------
    def _site_modules(self, k: int) -> tuple[HybridFeatureFusion, AttributionSpanEnlargement]:
        last = len(self.sites) - 1
        return (self.hff, self.ase) if k == last else (self.hff_extra[k], self.ase_extra[k])

    def _gate_site(self, k: int, features: Any) -> torch.Tensor:
        if not isinstance(features, torch.Tensor):
            raise ShapeError(f"layer {self.sites[k]!r} carries {type(features).__name__}; AGAIN needs a Tensor")
        hff, ase = self._site_modules(k)
        call = self._call
        if not call.get("again", True):
            aux = ase.fc(ase.pool(features))
        else:
            if self.training and self.use_hff:
                features = hff(features)
            features, aux = ase(features, targets=call.get("targets"), gate=self.gate, force=call.get("force"))
        if not self._recomputing:  # a checkpointed stage's recomputation in the backward pass returns nothing
            self._aux[k] = aux
        return features

    def _hook(self, k: int, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        return self._gate_site(k, output)

    def _pre_hook(self, k: int, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self._gate_site(k, inputs[0]),) + tuple(inputs[1:])

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
        if self.validate_values and not self.training and not x.requires_grad and not _tracing():
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
        force_gate: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Logits; with ``return_aux`` also the ASE logits (a tensor for one site, a tuple in site
        order for several). ``force_gate`` (one class per example) gates every site with those
        classes' rows instead of the predicted ones: the gate diagnostics' oracle and wrong gates."""
        if self._handles is None:
            raise UsageError("this AgainModel was unwrapped: use the backbone that unwrap() returned")
        self.check_input(x)
        if self.training and again and targets is None and self.gate_source == "label" and force_gate is None:
            raise UsageError(
                "AgainModel in train mode needs targets for the ASE label mix: call model(x, targets=y), "
                "or model(x, again=False) for a plain forward"
            )
        if self.training and x.shape[0] == 1 and self._has_batchnorm:
            raise ShapeError("a train-mode batch needs at least 2 images (BatchNorm); call model.eval() "
                             "to classify one image")
        if targets is not None:  # the labels index the ASE weights in training: check their values there
            self.check_targets(x, targets, values=self.training and self.validate_values)
        if force_gate is not None:
            self.check_targets(x, force_gate, values=not _tracing())
        if self.normalize_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        self._call = {"targets": targets if self.training else None, "again": again, "force": force_gate}
        try:
            logits = self.backbone(x)
        finally:
            self._call = {}
        aux = self._aux[0] if len(self._aux) == 1 else tuple(self._aux)
        self._aux = [None] * len(self._aux)
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch, passed to the backbone: its stages are recomputed in the backward pass (the
        RNG state replayed, so HFF and the label mix draw the same), each recomputation seeing the
        targets and switches of the forward call it belongs to."""
        if not hasattr(self.backbone, "checkpoint_context_fn"):
            raise ConfigError(f"gradient checkpointing of an AgainModel needs an againzoo CIFAR backbone; "
                              f"{type(self.backbone).__name__} cannot replay the AGAIN call in its recomputation")
        self.backbone.set_grad_checkpointing(enable)
        self.backbone.checkpoint_context_fn = self._checkpoint_contexts if enable else None

    def _checkpoint_contexts(self) -> tuple[Any, Any]:
        """torch.utils.checkpoint's ``context_fn``: nothing around the forward, this call's state
        around the recomputation."""
        call = dict(self._call)

        @contextlib.contextmanager
        def replay() -> Iterator[None]:
            saved, self._call, self._recomputing = self._call, call, True
            try:
                yield
            finally:
                self._call, self._recomputing = saved, False
        return contextlib.nullcontext(), replay()

    def again_config(self) -> dict[str, Any]:
        """The AGAIN options, as stored in ``config.json`` (one site: ``layer`` and ``layout`` are strings)."""
        one = len(self.sites) == 1
        return {"layer": self.layer if one else list(self.sites), "alpha": self.alpha, "hff": self.use_hff,
                "aux_weight": self.aux_weight, "layout": self.layout if one else list(self.layouts),
                "per_sample_gammas": self.hff.per_sample, "gate_source": self.gate_source,
                "detach_gate": self.detach_gate}

    def unwrap(self) -> nn.Module:
        """Remove the hooks and return the untouched backbone; this wrapper becomes unusable."""
        for h in self._handles or []:
            h.remove()
        self._handles = None
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
        return f"sites={self.sites!r}, num_features={self.num_features}, aux_weight={self.aux_weight}"
