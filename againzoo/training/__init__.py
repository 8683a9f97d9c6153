"""Adversarial training: one trainer loop, methods as small plug-ins, AGAIN's schedule, resume."""

from .methods import METHODS, Method
from .trainer import train

__all__ = ["METHODS", "Method", "train"]
