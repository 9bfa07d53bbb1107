"""The defender's clean data: exactly `spc` images per class from the training split."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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


def stratified_index(
    labels: torch.Tensor, num_classes: int, per_class: int, generator: torch.Generator
) -> torch.Tensor:
    """Sorted row indices: the first `per_class` rows of each class in a seeded random order."""
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


MAX_INDEX_FILE = 16 * 1024 * 1024


def read_indices(path: Path) -> tuple[int, ...]:
    """Row indices into the training split from a file: integers separated by whitespace or commas
    (as `np.savetxt` writes them), or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"mitigation indices file {path} does not exist")
    if path.stat().st_size > MAX_INDEX_FILE:
        raise InvalidRequest(f"mitigation indices file {path} is larger than {MAX_INDEX_FILE // 2**20} MiB")
    text = path.read_text(errors="replace").strip()
    if text.startswith("["):
        text = text.strip("[]")
    values = [v for v in re.split(r"[\s,]+", text) if v]
    try:
        parsed = [float(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise InvalidRequest(
            f"{path}: {bad[:40]!r} is not an integer index (expected integers separated by spaces, commas or newlines)"
        ) from None
    if any(v != int(v) for v in parsed):
        raise InvalidRequest(f"{path}: indices must be whole numbers")
    if not parsed:
        raise InvalidRequest(f"{path} lists no indices")
    return tuple(int(v) for v in parsed)


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def mitigation_from_indices(train: ImageSet, indices: tuple[int, ...]) -> ImageSet:
    """The defender's clean set given as rows of the training split (e.g. another tool's D_m)."""
    if train.split != "train":
        raise InvalidRequest(f"a mitigation set is drawn from the training split, not {train.split!r}")
    index = torch.tensor(indices, dtype=torch.long)
    if int(index.min()) < 0 or int(index.max()) >= len(train):
        raise InvalidRequest(
            f"mitigation indices must be in 0..{len(train) - 1} (the training split), "
            f"got {int(index.min())}..{int(index.max())}"
        )
    if len(index.unique()) != len(index):
        raise InvalidRequest("mitigation indices repeat an image; each index may appear once")
    return train.subset(index.sort().values, split="mitigation")


def indices_digest(indices: tuple[int, ...]) -> str:
    """Order-free fingerprint of a set of indices, for experiment keys."""
    joined = ",".join(str(i) for i in sorted(indices))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]
