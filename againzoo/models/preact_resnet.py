"""Pre-activation ResNet-18 for CIFAR (He et al. 2016, "Identity Mappings"), as used by
Rice et al. 2020 and Wong et al. 2020 for adversarial training.

The final BN + ReLU before pooling is the module ``act``: the last feature stage that AGAIN hooks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, build_cifar, cifar_cfg


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(CifarClassifier):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64,
                 in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg", norm_mean: Any = None,
                 norm_std: Any = None):
        widths = [width * 2**i for i in range(len(layers))]
        super().__init__(num_classes, widths[-1], in_chans, drop_rate, global_pool, norm_mean, norm_std, "stem")
        self.stem = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        in_planes = width
        self.feature_info = [{"num_chs": width, "reduction": 1, "module": "stem"}]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, w, s))
                in_planes = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": w, "reduction": 2**i, "module": f"layer{i + 1}"})
        self.num_stages = len(layers)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.act = nn.ReLU()
        # the last stage's post-activation output replaces the raw layer4 output
        self.feature_info[-1] = {"num_chs": widths[-1], "reduction": 2 ** (len(layers) - 1), "module": "act"}
        self.init_weights()

    def feature_stages(self) -> list:
        last = self.num_stages
        return ([self.stem] + [getattr(self, f"layer{i + 1}") for i in range(last - 1)]
                + [lambda x: self.act(self.bn(getattr(self, f"layer{last}")(x)))])


default_cfgs = generate_default_cfgs({name: cifar_cfg(first_conv="stem")
                                      for name in ("preactresnet18", "preactresnet18_cifar")})


@register_model
def preactresnet18(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """Pre-activation ResNet-18 for CIFAR."""
    return build_cifar(PreActResNet, "preactresnet18", pretrained, **kwargs)


@register_model
def preactresnet18_cifar(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """Pre-activation ResNet-18 for CIFAR (alias of ``preactresnet18``)."""
    return build_cifar(PreActResNet, "preactresnet18_cifar", pretrained, **kwargs)
