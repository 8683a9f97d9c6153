"""Adversarial attacks on models that take images in [0, 1]: FGSM, PGD (+ C&W-inf as PGD on the
margin loss), APGD-CE / APGD-T and Square (AutoAttack's components, Croce & Hein 2020), with
pluggable per-example losses."""

from . import losses
from .apgd import apgd, apgd_targeted
from .pgd import fgsm, pgd, project, random_init
from .square import square

__all__ = ["apgd", "apgd_targeted", "fgsm", "losses", "pgd", "project", "random_init", "square"]
