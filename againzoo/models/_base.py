"""Shared plumbing of the CIFAR backbones: timm-style config, in-model normalisation, head.

Every backbone takes float images in [0, 1] and normalises them itself (persistent buffers, so a
checkpoint carries its normalisation), which is what adversarial attacks need: the threat model
lives in pixel space. Its ``pretrained_cfg`` therefore advertises identity ``mean``/``std`` to timm's
data pipeline and keeps the statistics in ``model_mean``/``model_std`` (one normalisation, not two).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.utils.checkpoint
from timm.layers import create_classifier
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a CIFAR backbone (timm keys). Its mean/std are the identity: the
    model normalises inside (``norm_mean``/``norm_std``), timm's data pipeline must not."""
    cfg = {
        "url": "",
        "hf_hub_id": None,
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "stem.conv",
        "classifier": "fc",
        "license": "apache-2.0",
    }
    cfg.update(overrides)
    return cfg


def model_stats(cfg: dict[str, Any], channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation a model applies inside: ``model_mean``/``model_std``, or, in configs
    written before that split, ``mean``/``std``."""
    mean = cfg.get("model_mean", cfg.get("mean", (0.0,) * channels))
    std = cfg.get("model_std", cfg.get("std", (1.0,) * channels))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def inside_normalized(cfg: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """The ``pretrained_cfg`` a model that normalises inside shows to timm's data pipeline: identity
    ``mean``/``std`` (so ``resolve_data_config`` + ``create_transform`` feed [0, 1] images, not
    normalised ones twice), the statistics it applies in ``model_mean``/``model_std``."""
    n = len(mean)
    return dict(cfg, mean=(0.0,) * n, std=(1.0,) * n, model_mean=tuple(mean), model_std=tuple(std),
                normalize_in_model=True)


def stats_to_model_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm factory kwargs of a model that normalises inside: dataset statistics given the timm way,
    as non-identity ``mean``/``std`` in ``pretrained_cfg_overlay`` (or ``model_mean``/``model_std``
    of againzoo 0.1 configs), become ``norm_mean``/``norm_std`` (unless given) and the cfg keeps the
    identity: one normalisation, inside the model."""
    kwargs = dict(kwargs)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    for key in ("model_mean", "model_std", "mean", "std"):
        value = overlay.pop(key, None)
        identity = value is not None and all(float(v) == (0.0 if key.endswith("mean") else 1.0) for v in value)
        if value is not None and not identity:
            kwargs.setdefault("norm_" + key.rpartition("_")[2], tuple(float(v) for v in value))
    overlay.pop("normalize_in_model", None)
    cfg = kwargs.get("pretrained_cfg")
    if isinstance(cfg, dict):  # a cfg read from a config.json (hf-hub:, local-dir:) of againzoo 0.1
        kwargs["pretrained_cfg"] = {k: v for k, v in cfg.items() if k not in ("model_mean", "model_std",
                                                                             "normalize_in_model")}
    in_chans = int(kwargs.get("in_chans", 3))
    if "in_chans" in kwargs:
        overlay["input_size"] = (in_chans,) + tuple(overlay.get("input_size", (3, 32, 32)))[1:]
    kwargs["pretrained_cfg_overlay"] = dict(overlay, mean=(0.0,) * in_chans, std=(1.0,) * in_chans)
    return kwargs


# set by againzoo.timm_entries (on `import againzoo`): (variant, pretrained_cfg, kwargs) -> the zoo's
# published model of that backbone, sha256-checked; a hook, so that the models never import the zoo
ZOO_WEIGHTS: Callable[[str, Any, dict[str, Any]], nn.Module] | None = None


def build_cifar(model_cls: type, variant: str, pretrained: bool = False, num_stages: int = 5,
                **kwargs: Any) -> nn.Module:
    """A CIFAR backbone through timm's ``build_model_with_cfg`` (every usual kwarg: ``num_classes``,
    ``in_chans``, ``global_pool``, ``drop_rate``, ``features_only``/``out_indices`` (default: every
    one of its ``num_stages`` ``feature_info`` entries), ``pretrained_cfg_overlay``; ``pretrained``
    with a ``file``/``hf-hub``/``local-dir`` source). Statistics: :func:`stats_to_model_args`."""
    kwargs = stats_to_model_args(kwargs)
    if pretrained and not has_weights_source(kwargs.get("pretrained_cfg"), kwargs["pretrained_cfg_overlay"]):
        if ZOO_WEIGHTS is not None:  # the zoo's published weights for this backbone (resnet18_cifar.<tag>)
            return ZOO_WEIGHTS(variant, kwargs.get("pretrained_cfg"), kwargs)
        raise ValueError(f"timm has no pretrained weights for the CIFAR backbone {variant!r}; use "
                         f"timm.create_model('again_...', pretrained=True) or againzoo.create_model for the zoo's")
    feature_cfg = {"feature_cls": "getter", "out_indices": tuple(range(num_stages))}
    return build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg,
                                pretrained_filter_fn=backbone_weights, **kwargs)


def backbone_weights(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: from an AGAIN checkpoint (``backbone.*``, ``ase.*``), the
    backbone's weights; any other state dict as it is."""
    if any(k.startswith("backbone.") for k in state_dict):
        return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    return state_dict


def has_weights_source(cfg: Any, overlay: dict[str, Any]) -> bool:
    """Whether a pretrained cfg (and overlay) names weights to load (a file, a Hub repo, a URL)."""
    keys = ("file", "hf_hub_id", "url", "state_dict")
    if any(overlay.get(k) for k in keys):
        return True
    if isinstance(cfg, dict):
        return any(cfg.get(k) for k in keys)
    return False


def default_stats(in_chans: int, mean: Any = None, std: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``norm_mean``/``norm_std`` for ``in_chans`` channels: the given ones (one value per channel),
    else CIFAR-10's (their average per channel when ``in_chans != 3``)."""
    if mean is None:
        mean = CIFAR10_MEAN if in_chans == 3 else (sum(CIFAR10_MEAN) / 3,) * in_chans
    if std is None:
        std = CIFAR10_STD if in_chans == 3 else (sum(CIFAR10_STD) / 3,) * in_chans
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"norm_mean/norm_std need one value per input channel ({in_chans}), "
                         f"got {len(mean)} and {len(std)}")
    return mean, std


class CifarClassifier(nn.Module):
    """Base: normalisation buffers, timm's pooling + Linear head and classifier API, and
    ``forward_intermediates`` over the stages listed in ``feature_info`` (timm's feature getter:
    ``features_only=True`` with ``out_indices``). A subclass sets ``feature_info`` (one entry per
    stage, index 0 the stem) and returns the stage callables, in order, from :meth:`feature_stages`."""

    normalizes_input = True

    def __init__(self, num_classes: int, num_features: int, in_chans: int = 3, drop_rate: float = 0.0,
                 global_pool: str = "avg", norm_mean: Any = None, norm_std: Any = None, first_conv: str = "stem.conv"):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.in_chans = in_chans
        # applied inside forward() (feed images in [0, 1]); the cfg timm's data pipeline reads says identity
        mean, std = default_stats(in_chans, norm_mean, norm_std)
        self.pretrained_cfg = self.default_cfg = cifar_cfg(num_classes=num_classes, input_size=(in_chans, 32, 32),
                                                           mean=(0.0,) * in_chans, std=(1.0,) * in_chans,
                                                           first_conv=first_conv)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self._make_head(num_classes, global_pool)
        self.feature_info: list[dict[str, Any]] = []
        self._pruned_to: int | None = None
        self.grad_checkpointing = False
        # context_fn of torch.utils.checkpoint: AgainModel sets it so that a recomputed stage sees the
        # same call (targets, AGAIN switch) as its forward
        self.checkpoint_context_fn: Callable[[], Any] | None = None

    def _make_head(self, num_classes: int, global_pool: str) -> None:
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.num_classes = num_classes

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean/std applied to [0, 1] inputs (``norm_mean``/``norm_std``, or the loaded buffers)."""
        return buffer_stats(self)

    def feature_stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """One callable per ``feature_info`` entry, in forward order (the last one's output is the
        final feature map)."""
        raise NotImplementedError

    def _live_stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return self.feature_stages()[: self._pruned_to]

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        pool = global_pool if global_pool is not None else self.global_pool.pool_type
        self._make_head(num_classes, pool)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: in training, recompute each stage's activations in the backward pass instead
        of keeping them (less memory, about one more forward pass of time; the RNG state is replayed)."""
        self.grad_checkpointing = bool(enable)

    def _run_stage(self, stage: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            kw = {"context_fn": self.checkpoint_context_fn} if self.checkpoint_context_fn is not None else {}
            return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False, **kw)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for stage in self._live_stages():
            x = self._run_stage(stage, x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's feature API: the outputs of the ``feature_info`` stages ``indices`` (an int: the last n)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = self._live_stages()
        take, max_index = feature_take_indices(len(stages), indices)
        intermediates = []
        x = self.normalize(x)
        for i, stage in enumerate(stages[:max_index + 1] if stop_early or intermediates_only else stages):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head): what a features-only model keeps."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        for info in self.feature_info[max_index + 1:]:
            _replace(self, info["module"], nn.Identity())
        self._pruned_to = max_index + 1
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


def buffer_stats(module: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The statistics held in a module's ``mean``/``std`` buffers (shape ``(1, C, 1, 1)``)."""
    return tuple(module.mean.flatten().tolist()), tuple(module.std.flatten().tolist())


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std a model applies to its [0, 1] inputs (identity for one that applies none)."""
    if hasattr(model, "input_stats"):
        return model.input_stats()
    n = int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0])
    return (0.0,) * n, (1.0,) * n


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
