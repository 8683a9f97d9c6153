"""Shared plumbing of the CIFAR backbones: timm-style config, in-model normalisation, head.

Every backbone takes float images in [0, 1] and normalises them itself (persistent buffers, so a
checkpoint carries its normalisation), which is what adversarial attacks need: the threat model
lives in pixel space. Its ``pretrained_cfg`` therefore advertises identity ``mean``/``std`` to timm's
data pipeline and keeps the statistics in ``model_mean``/``model_std`` (one normalisation, not two).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a CIFAR backbone (timm keys)."""
    cfg = {
        "url": "",
        "hf_hub_id": None,
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
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


def resolve_cfg(default: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Merge timm's ``pretrained_cfg`` / ``pretrained_cfg_overlay`` factory arguments."""
    cfg = dict(default)
    given = kwargs.pop("pretrained_cfg", None)
    if given is not None and not isinstance(given, str):
        cfg.update(given if isinstance(given, dict) else given.to_dict())
    cfg.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    kwargs.pop("cache_dir", None)
    return cfg


def check_not_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(
            f"timm has no pretrained weights for the CIFAR backbone {name!r}; "
            f"use againzoo.create_model('again_...', pretrained=True) for the zoo's checkpoints"
        )


class CifarClassifier(nn.Module):
    """Base: normalisation buffers, GAP + Linear head, timm's classifier API."""

    normalizes_input = True

    def __init__(self, num_classes: int, num_features: int, cfg: dict[str, Any], in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        # the statistics are applied inside forward() (feed images in [0, 1]); the cfg timm's data
        # pipeline reads says identity (see inside_normalized)
        mean, std = model_stats(cfg, in_chans)
        cfg = inside_normalized(dict(cfg, num_classes=num_classes,
                                     input_size=(in_chans,) + tuple(cfg["input_size"][1:])), mean, std)
        self.pretrained_cfg = self.default_cfg = cfg
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.global_pool = "avg"
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
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
