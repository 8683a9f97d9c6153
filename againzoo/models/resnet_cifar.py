"""ResNet-18 for 32x32 inputs (He et al. 2016, CIFAR variant): 3x3 stride-1 stem, no max-pool.

The backbone of the paper's Tables 2, 3, 5 and 6.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, build_cifar, cifar_cfg


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Stem(nn.Sequential):
    def __init__(self, in_chans: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)


class ResNetCifar(CifarClassifier):
    """ResNet with BasicBlocks and a CIFAR stem; ``width`` scales every stage (64 = standard)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64,
                 in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg", norm_mean: Any = None,
                 norm_std: Any = None):
        widths = [width * 2**i for i in range(len(layers))]
        super().__init__(num_classes, widths[-1], in_chans, drop_rate, global_pool, norm_mean, norm_std, "stem.conv")
        self.stem = Stem(in_chans, width)
        in_planes = width
        self.feature_info = [{"num_chs": width, "reduction": 1, "module": "stem"}]
        for i, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, w, s))
                in_planes = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": w, "reduction": 2**i, "module": f"layer{i + 1}"})
        self.num_stages = len(layers)
        self.init_weights()

    def feature_stages(self) -> list:
        return [self.stem] + [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]


default_cfgs = generate_default_cfgs({"resnet18_cifar": cifar_cfg()})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-18, CIFAR stem (3x3 conv, stride 1, no max-pool); ``width=64`` is the standard model."""
    return build_cifar(ResNetCifar, "resnet18_cifar", pretrained, **kwargs)
