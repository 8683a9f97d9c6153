"""VGG-16 with batch norm for 32x32 inputs (Simonyan & Zisserman 2015), the CIFAR variant used in
the paper's section 3: 13 conv-BN-ReLU layers in five stages, 2x2 max-pool between stages, then
global average pooling over the last stage (2x2 at 32 px) and one linear classifier.

Each stage is a module ``stages.<i>``; the last one is the feature stage AGAIN hooks.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, build_cifar, cifar_cfg

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VggCifar(CifarClassifier):
    def __init__(self, stages: tuple[tuple[int, ...], ...] = VGG16_STAGES, num_classes: int = 10,
                 width_mult: float = 1.0, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg",
                 norm_mean: Any = None, norm_std: Any = None):
        stages = tuple(tuple(max(1, int(c * width_mult)) for c in s) for s in stages)
        super().__init__(num_classes, stages[-1][-1], in_chans, drop_rate, global_pool, norm_mean, norm_std,
                         "stages.0.0")
        layers, self.feature_info, c_in = [], [], in_chans
        for i, stage in enumerate(stages):
            mods: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for c in stage:
                mods += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.Sequential(*mods))
            self.feature_info.append({"num_chs": c_in, "reduction": 2**i, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*layers)
        self.init_weights()

    def feature_stages(self) -> list:
        return list(self.stages)


default_cfgs = generate_default_cfgs({"vgg16_cifar": cifar_cfg(first_conv="stages.0.0")})


@register_model
def vgg16_cifar(pretrained: bool = False, **kwargs: Any) -> VggCifar:
    """VGG-16-BN for CIFAR; ``width_mult`` scales the channels for tests."""
    return build_cifar(VggCifar, "vgg16_cifar", pretrained, **{"stages": VGG16_STAGES, **kwargs})
