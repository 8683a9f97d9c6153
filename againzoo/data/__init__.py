"""Datasets (CIFAR-10/100 from pickles, packed npz, image folders, torchvision; embedded digits)
and the on-device tensor loader with batched augmentation."""

from .datasets import (CIFAR10_CLASSES, DATASETS, NUM_CLASSES, SPLITS, ArrayDataset, load_dataset)
from .loader import TensorLoader, random_crop_flip

__all__ = ["ArrayDataset", "CIFAR10_CLASSES", "DATASETS", "NUM_CLASSES", "SPLITS", "TensorLoader",
           "load_dataset", "random_crop_flip"]
