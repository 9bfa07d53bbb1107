"""ImageSet: a whole split resident in memory as one uint8 tensor."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a dataset."""

    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # horizontal flip is a label-preserving augmentation for this data
    note: str = ""  # anything a reader of the results must know (approximations, sources)
    # zero padding of the random-crop augmentation (torchvision's RandomCrop(padding=4) by default)
    crop_padding: int = 4

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def content_fingerprint(images: Tensor, labels: Tensor) -> str:
    """sha256 (first 16 hex digits) of a split's pixels, labels and shape."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class ImageSet:
    """uint8 images [N,C,H,W], int64 labels [N], the dataset's info and the split name.

    `source_index` maps each row to its row in the split it was drawn from (a
    subset keeps the link back, e.g. a mitigation set to the training split).
    """

    images: Tensor
    labels: Tensor
    info: DatasetInfo
    split: str
    source_index: Tensor | None = field(default=None, repr=False)
    fingerprint: str = field(default="", repr=False)  # content hash (see `digest`); "" until computed

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N] with N={self.images.shape[0]}, got {tuple(self.labels.shape)}")
        self.labels = self.labels.to(torch.int64)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.info.num_classes):
            raise ValueError(f"labels outside 0..{self.info.num_classes - 1} in {self.info.name}/{self.split}")
        if self.images.shape[1] != len(self.info.mean):
            raise ValueError(f"{self.info.name}: {self.images.shape[1]} channels but {len(self.info.mean)} mean values")
        if self.source_index is None:
            self.source_index = torch.arange(len(self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def digest(self) -> str:
        """Content fingerprint of the images and labels (computed once; loaders keep it in the cache)."""
        if not self.fingerprint:
            self.fingerprint = content_fingerprint(self.images, self.labels)
        return self.fingerprint

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def subset(self, index: Tensor, split: str | None = None) -> ImageSet:
        """Rows `index` of this set, remembering where they came from."""
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            self.images[index],
            self.labels[index],
            self.info,
            split or self.split,
            self.source_index[index],
        )

    def normalized_as(self, mean: tuple[float, ...], std: tuple[float, ...], why: str) -> ImageSet:
        """The same images with other normalization constants (a model trained elsewhere expects its
        own); `why` is added to the dataset note so every result shows it."""
        if len(mean) != self.channels or len(std) != self.channels or min(std) <= 0:
            raise ValueError(f"normalization needs {self.channels} means and positive stds, got {mean} / {std}")
        note = f"{self.info.note}; {why}" if self.info.note else why
        info = dataclasses.replace(self.info, mean=tuple(mean), std=tuple(std), note=note)
        return ImageSet(self.images, self.labels, info, self.split, self.source_index, self.fingerprint)

    def class_counts(self) -> Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Normalization constants as tensors [C] of torch's default dtype (float32 unless a caller
        such as the learned-outcome tests computes in float64)."""
        return torch.tensor(self.info.mean), torch.tensor(self.info.std)


def as_unlabeled(source: ImageSet, like: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """`n` random images of `source` converted to `like`'s channels and size, with no labels
    (all 0) and `like`'s normalization: out-of-distribution data for a model trained on `like`."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(source), generator=g)[: min(n, len(source))]
    x = source.images[rows].to(torch.get_default_dtype())
    if x.shape[1] != like.channels:
        x = x.mean(1, keepdim=True) if like.channels == 1 else x.mean(1, keepdim=True).expand(-1, like.channels, -1, -1)
    if x.shape[-1] != like.image_size:
        x = F.interpolate(x, size=(like.image_size, like.image_size), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).contiguous()
    return ImageSet(images, torch.zeros(len(images), dtype=torch.long), like.info, "unlabeled")
