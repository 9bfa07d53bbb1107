"""The defender's clean data: exactly `spc` images per class from the training split."""

from __future__ import annotations

import hashlib

import torch

from bd_core.data.imageset import ImageSet
from bd_core.errors import InvalidRequest


def _partition_seed(dataset: str, partition: int) -> int:
    digest = hashlib.sha256(f"mitigation:{dataset}:{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def check_mitigation_request(spc: int, partition: int) -> None:
    if isinstance(spc, bool) or not isinstance(spc, int) or spc < 1:
        raise InvalidRequest(f"spc (samples per class) must be an integer >= 1, got {spc!r}")
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise InvalidRequest(f"partition must be an integer >= 0, got {partition!r}")


def mitigation_set(train: ImageSet, spc: int, partition: int) -> ImageSet:
    """A stratified clean subset with `spc` samples per class, reproducible per partition.

    Drawn from the training split only, so it never overlaps the test set. For a
    given partition the per-class order is fixed, so the SPC 2 set is contained in
    the SPC 10 set, which is contained in the SPC 100 set (the regimes differ only
    in how much data the defender has).
    """
    if train.split != "train":
        raise InvalidRequest(f"a mitigation set is drawn from the training split, not {train.split!r}")
    check_mitigation_request(spc, partition)
    counts = train.class_counts()
    smallest = int(counts.min())
    if spc > smallest:
        cls = int(counts.argmin())
        raise InvalidRequest(
            f"spc={spc} is larger than class {cls} ({train.info.classes[cls]!r}), which has {smallest} "
            f"training images; use spc <= {smallest}"
        )
    g = torch.Generator().manual_seed(_partition_seed(train.info.name, partition))
    return train.subset(stratified_index(train.labels, train.num_classes, spc, g), split="mitigation")


def stratified_index(labels: torch.Tensor, num_classes: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted row indices: the first `per_class` rows of each class in a seeded random order."""
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values
