"""torch.hub entry points of againzoo.

    torch.hub.load("<owner>/againzoo", "again_resnet18", pretrained=True)            # zoo weights
    torch.hub.load("<local checkout>", "again_resnet18", source="local")              # untrained
    torch.hub.load("<local checkout>", "again_resnet18", source="local", pretrained="org/name")

``pretrained`` is False (untrained), True (the zoo's registry, ``againzoo/registry.py``, checked
against its sha256), a local checkpoint directory, or a Hugging Face Hub repo id. ``dataset``
('cifar10', the default, 'cifar100' or the demo 'digits') picks the registry entry; ``num_classes``
defaults to the dataset's, and one that contradicts a named dataset is an error.
Measured metrics of each published checkpoint are in its eval.json, its Hub card and
MODEL_CARD.md.
"""

dependencies = ["torch", "timm", "safetensors", "huggingface_hub", "yaml", "pydantic"]

from againzoo import create_model as _create  # noqa: E402
from againzoo.errors import ConfigError as _ConfigError  # noqa: E402

_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}  # digits: the embedded demo dataset


def _check(num_classes, dataset):
    """(num_classes, dataset) made consistent: a dataset named explicitly fixes the class count, and a
    num_classes that contradicts it is an error, with or without pretrained weights."""
    if dataset is not None and dataset not in _CLASSES:
        raise _ConfigError(f"dataset must be one of {', '.join(sorted(_CLASSES))}, got {dataset!r}")
    if dataset is not None and num_classes is not None and num_classes != _CLASSES[dataset]:
        raise _ConfigError(f"dataset={dataset!r} has {_CLASSES[dataset]} classes, but num_classes={num_classes} "
                           f"was asked for; drop num_classes or pick the matching dataset")
    return (num_classes or _CLASSES[dataset or "cifar10"]), dataset


def _entry(name, pretrained, num_classes, dataset, kwargs):
    n, dataset = _check(num_classes, dataset)
    if pretrained:
        return _create(name, num_classes=num_classes, pretrained=pretrained, dataset=dataset or "cifar10", **kwargs)
    return _create(name, num_classes=n, **kwargs)


def again_resnet18(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """AGAIN ResNet-18 (CIFAR stem: 3x3 conv, stride 1, no max-pool), ASE + HFF at layer4.

    Variants (recipes): cifar10_resnet18_again_pgd_at, _again_mart, _again_awp, _again_pgd_at_fast;
    cifar100_resnet18_again_pgd_at, _again_awp. Metrics: MODEL_CARD.md / the Hub card's eval.json.
    """
    return _entry("again_resnet18", pretrained, num_classes, dataset, kwargs)


def _plain(name, pretrained, num_classes, dataset, kwargs, **arch):
    """A plain (no AGAIN) CIFAR ResNet-18 entry: the registry's weights, or timm's builder untrained."""
    if pretrained:
        return _entry(name, pretrained, num_classes, dataset, kwargs)
    import timm

    return timm.create_model("resnet18_cifar", num_classes=_check(num_classes, dataset)[0], **arch, **kwargs)


def resnet18_cifar(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """Plain ResNet-18 (CIFAR stem), no AGAIN: the zoo's PGD-AT baseline twin of again_resnet18
    (recipe cifar10_resnet18_pgd_at_zoo, identical but for AGAIN). Metrics: MODEL_CARD.md.
    """
    return _plain("resnet18_cifar", pretrained, num_classes, dataset, kwargs)


def resnet18_cifar_w16_cpu(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """The CPU tier's plain ResNet-18 (width 16, 0.7 M parameters): PGD-2 adversarial training with weight
    averaging on a 2-core CPU (recipe cifar10_resnet18w16_cpu), the twin of again_resnet18_w16_cpu.
    Metrics: MODEL_CARD.md.
    """
    return _plain("resnet18_cifar_w16_cpu", pretrained, num_classes, dataset, kwargs, width=16)


def resnet18_cifar_w32_cpu(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """The CPU tier's plain ResNet-18 at width 32 (2.8 M parameters): the width-16 twin's recipe (PGD-2,
    weight averaging) at twice the width, 7 epochs in bf16 on a 2-core CPU (recipe cifar10_resnet18w32_cpu).
    Metrics: MODEL_CARD.md.
    """
    return _plain("resnet18_cifar_w32_cpu", pretrained, num_classes, dataset, kwargs, width=32)


def again_resnet18_w16_cpu(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """The CPU tier's AGAIN ResNet-18 (width 16): the twin's recipe with AGAIN at the last stage under the
    label-free `pred` gate (recipe cifar10_resnet18w16_again_cpu). Metrics: MODEL_CARD.md.
    """
    if pretrained:
        return _entry("again_resnet18_w16_cpu", pretrained, num_classes, dataset, kwargs)
    return _create("again_resnet18", num_classes=_check(num_classes, dataset)[0],
                   **{"width": 16, "gate_source": "pred", "alpha": 1.0, **kwargs})


def again_preactresnet18(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """AGAIN pre-activation ResNet-18 (CIFAR), ASE + HFF after the final BN-ReLU.

    Train it with any ResNet-18 recipe and ``--set model.arch=preactresnet18``. Metrics: MODEL_CARD.md.
    """
    return _entry("again_preactresnet18", pretrained, num_classes, dataset, kwargs)


def again_wrn34_10(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """AGAIN WideResNet-34-10 (as in TRADES/AWP), ASE + HFF after the final BN-ReLU.

    Variant (recipe): cifar10_wrn34_10_again_awp (the paper's Table 4). Metrics: MODEL_CARD.md.
    """
    return _entry("again_wrn34_10", pretrained, num_classes, dataset, kwargs)


def again_vgg16(pretrained=False, num_classes=None, dataset=None, **kwargs):
    """AGAIN VGG-16-BN (CIFAR), ASE + HFF at the last conv stage.

    Train it with any ResNet-18 recipe and ``--set model.arch=vgg16_cifar``. Metrics: MODEL_CARD.md.
    """
    return _entry("again_vgg16", pretrained, num_classes, dataset, kwargs)
