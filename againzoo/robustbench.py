"""A RobustBench model-info record (``model_info/<dataset>/<threat>/<name>.json``) from an eval.json.

RobustBench's leaderboard takes the official standard AutoAttack on the first n test images; the
record carries ``clean_acc`` and ``autoattack_acc`` from our ``AA`` column, and, for gated models
whose adaptive worst case is lower than AutoAttack's (the straight-through gate or the joint loss
find more), that lower number under ``external``, the field RobustBench uses for stronger
evaluations than AutoAttack.
"""

from __future__ import annotations

from typing import Any

from .version import __version__
from .card import eps_str
from .errors import UsageError

ARCHITECTURES = {"resnet18_cifar": "ResNet-18", "preactresnet18": "PreActResNet-18", "wrn34_10": "WideResNet-34-10",
                 "vgg16_cifar": "VGG-16-BN"}
FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
          "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote", "unreliable")


def record(result: dict[str, Any], config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The model-info fields for an evaluation that has an official AutoAttack (``AA``) column."""
    if "AA" not in result.get("columns", {}) or not result.get("autoattack"):
        raise UsageError("a RobustBench record needs the official AutoAttack column: evaluate with --suite aa or paper")
    recipe = config.get("recipe") or {}
    data = result.get("data") or {}
    aa, worst = result["columns"]["AA"], result["worst_case_acc"]
    gated = len(result["autoattack"]["runs"]) > 1
    notes = [f"Trained and evaluated with againzoo {__version__} (recipe {recipe.get('name', '?')})."]
    if gated:
        notes.append("AGAIN's inference gate is an argmax: AutoAttack ran with the hard gate and with a straight-through "
                     "gate, autoattack_acc is the per-example worst case of both.")
    if result["autoattack"].get("budget") != "standard":
        notes.append(f"Reduced AutoAttack budget {result['autoattack']['budget']}: not a leaderboard number.")
    if data.get("lossless") is False or (config.get("training_data") or {}).get("lossless") is False:
        notes.append("Trained on a JPEG-75 copy of CIFAR-10." if data.get("lossless") is not False
                     else "Evaluated on a JPEG-75 copy of the test set: not comparable with the leaderboard.")
    notes.append(f"Evaluated on {data.get('evaluated', str(data.get('n')) + ' test images')}.")
    return {
        "link": "",
        "name": name or recipe.get("name") or config.get("architecture", "againzoo model"),
        "authors": "againzoo",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": data.get("name", (recipe.get("data") or {}).get("dataset", "cifar10")),
        "venue": f"againzoo {__version__}",
        "architecture": ARCHITECTURES.get(config.get("backbone", config.get("architecture", "")),
                                          config.get("backbone", config.get("architecture", ""))),
        "eps": eps_str(result["eps"]),
        "clean_acc": f"{100 * result['clean_acc']:.2f}",
        "reported": f"{100 * aa:.2f}",
        "autoattack_acc": f"{100 * aa:.2f}",
        "external": f"{100 * worst:.2f}" if worst < aa else None,
        "footnote": " ".join(notes),
        "unreliable": bool(result.get("masking_suspected")),
    }
