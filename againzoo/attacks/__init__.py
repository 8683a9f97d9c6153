"""Adversarial attacks on models that take images in [0, 1]."""

from .pgd import pgd, project, random_init

__all__ = ["pgd", "project", "random_init"]
