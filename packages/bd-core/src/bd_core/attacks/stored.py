"""A trigger known only by its results: the poisoned versions of a fixed set of images.

An attacked model imported from another tool (`bd import`) may come with its own poisoned
test images and no description of the trigger that bd could re-run (SSBA's encoder,
InputAware's generators, a resampled WaNet grid...). `StoredTrigger` keeps those images,
keyed by a content hash of the clean image each was made from, so `apply` poisons exactly
the images the record poisoned and refuses any other: the metrics bd computes are then the
record's own, on the record's own triggered inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bd_core.attacks.base import Trigger, trigger_kind
from bd_core.data.batches import normalized_batch
from bd_core.errors import InvalidRequest


def image_keys(images: Tensor) -> Tensor:
    """int64 content key of every uint8 image [N,C,H,W] (first 8 bytes of its BLAKE2b digest)."""
    rows = images.detach().cpu().contiguous().view(len(images), -1).numpy()
    keys = [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little", signed=True) for r in rows]
    return torch.tensor(keys, dtype=torch.int64)


@trigger_kind("stored")
@dataclass
class StoredTrigger(Trigger):
    """Poisoned images stored per clean image: `keys[i]` is `image_keys` of the clean image
    whose poisoned version is `poisoned[i]` (uint8 [M,C,H,W])."""

    keys: Tensor
    poisoned: Tensor

    def __post_init__(self) -> None:
        if self.keys.dtype != torch.int64 or self.keys.dim() != 1:
            raise ValueError(f"keys must be int64 [M], got {self.keys.dtype} {tuple(self.keys.shape)}")
        if self.poisoned.dtype != torch.uint8 or self.poisoned.dim() != 4 or len(self.poisoned) != len(self.keys):
            raise ValueError(
                f"poisoned must be uint8 [M,C,H,W] with M={len(self.keys)}, "
                f"got {self.poisoned.dtype} {tuple(self.poisoned.shape)}"
            )
        self._row = {int(k): i for i, k in enumerate(self.keys.tolist())}

    def poison_pixels(self, images: Tensor) -> Tensor:
        """The stored poisoned version of every image (uint8 in, uint8 out); unknown images are refused."""
        rows = [self._row.get(int(k), -1) for k in image_keys(images).tolist()]
        missing = sum(r < 0 for r in rows)
        if missing:
            raise InvalidRequest(
                f"{missing} of {len(rows)} images are not among the {len(self.keys)} images this "
                "stored trigger was recorded on; a stored trigger poisons only its record's test set"
            )
        return self.poisoned[torch.tensor(rows, dtype=torch.long)].to(images.device)

    def check_fits(self, channels: int, size: int) -> None:
        if tuple(self.poisoned.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"its poisoned images are {tuple(self.poisoned.shape[1:])}, the model takes {(channels, size, size)}"
            )

    def apply(self, images, poisoned, mean, std, crop_offsets=None, padding=0, flip=None) -> Tensor:
        if poisoned is not None and bool(poisoned.any()):
            images = images.clone()
            rows = poisoned.nonzero().squeeze(1)
            images[rows] = self.poison_pixels(images[rows])
        return normalized_batch(images, mean, std, crop_offsets, padding, flip)

    def artifacts(self) -> dict[str, Tensor]:
        return {"keys": self.keys.contiguous(), "poisoned": self.poisoned.contiguous()}

    @classmethod
    def from_saved(cls, artifacts: dict[str, Tensor], settings: dict[str, Any]) -> StoredTrigger:
        return cls(artifacts["keys"], artifacts["poisoned"])

    @classmethod
    def from_pairs(cls, clean: Tensor, poisoned: Tensor) -> StoredTrigger:
        """From clean uint8 images and their poisoned versions, row by row."""
        if clean.shape != poisoned.shape:
            raise ValueError(f"clean {tuple(clean.shape)} and poisoned {tuple(poisoned.shape)} images differ in shape")
        return cls(image_keys(clean), poisoned.contiguous())
