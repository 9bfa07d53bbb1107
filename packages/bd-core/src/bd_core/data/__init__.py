"""Datasets as resident uint8 tensors, batched augmentation, mitigation sets."""

from bd_core.data.augment import Augment
from bd_core.data.datasets import DATASET_NAMES, canonical_dataset, load_dataset
from bd_core.data.imageset import DatasetInfo, ImageSet
from bd_core.data.mitigation import mitigation_set
from bd_core.data.synthetic import make_synthetic

__all__ = [
    "DATASET_NAMES",
    "Augment",
    "DatasetInfo",
    "ImageSet",
    "canonical_dataset",
    "load_dataset",
    "make_synthetic",
    "mitigation_set",
]
