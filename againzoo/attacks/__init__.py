"""Adversarial attacks on models that take images in [0, 1]: FGSM, PGD (+ C&W-inf as PGD on the
margin loss) and APGD-CE / APGD-T (Croce & Hein 2020) with pluggable per-example losses, for the
objectives adaptive to AGAIN's gate that the official AutoAttack (``againzoo.autoattack``, the
``pyautoattack`` package) cannot run."""

from . import losses
from .apgd import apgd, apgd_targeted
from .pgd import fgsm, pgd, project, random_init

__all__ = ["apgd", "apgd_targeted", "fgsm", "losses", "pgd", "project", "random_init"]
