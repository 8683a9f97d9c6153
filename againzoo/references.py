"""The AGAIN paper's reported accuracies (%), for side-by-side *reference* only.

Transcribed from Tables 2-4 of Lin et al., CVPR 2023, keyed by the recipe that reproduces the row.
They are the authors' claims under their evaluation, never a result of this package; eval.json
stores them under ``reference`` with this provenance.
"""

from __future__ import annotations

SOURCE = "Lin et al., AGAIN, CVPR 2023"

PAPER: dict[str, tuple[str, dict[str, float]]] = {
    'cifar10_resnet18_pgd_at': (
        'Table 2 (CIFAR-10, ResNet-18), row PGD-AT',
        {"Clean": 84.25, "PGD-10": 46.88, "PGD-20": 46.56, "PGD-50": 44.85, "PGD-100": 44.76, "C&W": 45.75, "AA": 41.69},
    ),
    'cifar10_resnet18_mart': (
        'Table 2 (CIFAR-10, ResNet-18), row MART',
        {"Clean": 81.61, "PGD-10": 52.38, "PGD-20": 51.28, "PGD-50": 50.93, "PGD-100": 50.8, "C&W": 47.77, "AA": 46.09},
    ),
    'cifar10_resnet18_trades': (
        'Table 2 (CIFAR-10, ResNet-18), row TRADES',
        {"Clean": 83.64, "PGD-10": 52.05, "PGD-20": 50.67, "PGD-50": 50.38, "PGD-100": 50.2, "C&W": 49.68, "AA": 48.41},
    ),
    'cifar10_resnet18_awp': (
        'Table 2 (CIFAR-10, ResNet-18), row AWP',
        {"Clean": 79.45, "PGD-10": 55.04, "PGD-20": 54.47, "PGD-50": 54.36, "PGD-100": 54.3, "C&W": 51.17, "AA": 49.4},
    ),
    'cifar10_resnet18_again_pgd_at': (
        'Table 2 (CIFAR-10, ResNet-18), row AGAIN-PGD-AT',
        {"Clean": 87.88, "PGD-10": 54.87, "PGD-20": 54.43, "PGD-50": 53.62, "PGD-100": 53.13, "C&W": 55.8, "AA": 49.31},
    ),
    'cifar10_resnet18_again_mart': (
        'Table 2 (CIFAR-10, ResNet-18), row AGAIN-MART',
        {"Clean": 87.13, "PGD-10": 56.63, "PGD-20": 56.0, "PGD-50": 55.71, "PGD-100": 55.67, "C&W": 58.56, "AA": 50.77},
    ),
    'cifar10_resnet18_again_awp': (
        'Table 2 (CIFAR-10, ResNet-18), row AGAIN-AWP',
        {"Clean": 86.52, "PGD-10": 59.99, "PGD-20": 59.35, "PGD-50": 59.11, "PGD-100": 58.85, "C&W": 61.19, "AA": 51.89},
    ),
    'cifar100_resnet18_again_pgd_at': (
        'Table 3 (CIFAR-100, ResNet-18), row AGAIN-PGD-AT',
        {"Clean": 66.92, "PGD-10": 32.97, "PGD-20": 32.88, "PGD-50": 32.54, "PGD-100": 32.15, "C&W": 35.59, "AA": 26.21},
    ),
    'cifar100_resnet18_again_awp': (
        'Table 3 (CIFAR-100, ResNet-18), row AGAIN-AWP',
        {"Clean": 64.51, "PGD-10": 35.58, "PGD-20": 35.44, "PGD-50": 35.39, "PGD-100": 35.08, "C&W": 40.02, "AA": 28.69},
    ),
    'cifar10_wrn34_10_again_awp': (
        'Table 4 (CIFAR-10, WideResNet-34-10), row AGAIN-AWP',
        {"Clean": 90.31, "PGD-20": 62.43, "PGD-50": 62.29, "C&W": 68.13, "AA": 53.59},
    ),
}


# what our own measurements say about the AGAIN rows (benchmarks/RESULTS.md, "The AGAIN study")
AGAIN_CAVEAT = ("Our AGAIN study (benchmarks/RESULTS.md) could not confirm the AGAIN rows: with the paper's "
                "label-mixed gate the classifier copies its gate, and no AGAIN variant beats the same recipe "
                "without AGAIN beyond the interval (CPU proxy at width 16, three seeds, 1,000 test images)")


def reference_for(recipe_name: str | None) -> dict | None:
    """``{source, numbers}`` (and, for AGAIN rows, ``caveat``: what our own study found) for a recipe
    that reproduces a row of the paper, else None."""
    if recipe_name not in PAPER:
        return None
    where, numbers = PAPER[recipe_name]
    out = {"source": f"{SOURCE}, {where} (reported by the authors, not measured here)", "numbers": numbers}
    if "again" in recipe_name:
        out["caveat"] = AGAIN_CAVEAT
    return out
