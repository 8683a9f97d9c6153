"""CIFAR backbones registered in timm: importing this package registers
``resnet18_cifar``, ``preactresnet18``, ``wrn34_10`` and ``vgg16_cifar``."""

from .preact_resnet import PreActResNet, preactresnet18
from .resnet_cifar import ResNetCifar, resnet18_cifar
from .vgg_cifar import VggCifar, vgg16_cifar
from .wide_resnet import WideResNet, wrn34_10

BACKBONES = ("resnet18_cifar", "preactresnet18", "wrn34_10", "vgg16_cifar")

__all__ = ["BACKBONES", "PreActResNet", "ResNetCifar", "VggCifar", "WideResNet",
           "preactresnet18", "resnet18_cifar", "vgg16_cifar", "wrn34_10"]
