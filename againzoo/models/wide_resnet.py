"""WideResNet-34-10 (Zagoruyko & Komodakis 2016) in the form used by TRADES and AWP for CIFAR:
16-channel stem, three groups of 5 pre-activation blocks (widths 16k, 32k, 64k), final BN + ReLU.

TRADES' file also builds an unused ``sub_block1``; it is omitted here (it never runs).
The final BN + ReLU is the module ``act``: the last feature stage that AGAIN hooks, as in the
official AGAIN-AWP code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, build_cifar, cifar_cfg


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        shortcut = x if self.equal_in_out else self.shortcut(o)
        out = F.relu(self.bn2(self.conv1(o)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(CifarClassifier):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, block_drop_rate: float = 0.0, global_pool: str = "avg",
                 norm_mean: Any = None, norm_std: Any = None):
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        super().__init__(num_classes, widths[3], in_chans, drop_rate, global_pool, norm_mean, norm_std, "conv1")
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.feature_info = [{"num_chs": widths[0], "reduction": 1, "module": "conv1"}]
        for g in range(3):
            blocks = [WideBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                (1 if g == 0 else 2) if i == 0 else 1, block_drop_rate) for i in range(n)]
            self.add_module(f"block{g + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": widths[g + 1], "reduction": 2**g, "module": f"block{g + 1}"})
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.act = nn.ReLU()
        self.feature_info[-1] = {"num_chs": widths[3], "reduction": 4, "module": "act"}
        self.init_weights()

    def feature_stages(self) -> list:
        return [self.conv1, self.block1, self.block2, lambda x: self.act(self.bn1(self.block3(x)))]


default_cfgs = generate_default_cfgs({name: cifar_cfg(first_conv="conv1") for name in ("wrn34_10", "wrn34_10_cifar")})


@register_model
def wrn34_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WideResNet-34-10 as in TRADES/AWP; ``widen_factor`` may be lowered for tests."""
    return build_cifar(WideResNet, "wrn34_10", pretrained, num_stages=4, **{"depth": 34, "widen_factor": 10, **kwargs})


@register_model
def wrn34_10_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WideResNet-34-10 for CIFAR (alias of ``wrn34_10``)."""
    return build_cifar(WideResNet, "wrn34_10_cifar", pretrained, num_stages=4, **{"depth": 34, "widen_factor": 10, **kwargs})
