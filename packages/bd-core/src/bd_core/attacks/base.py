"""What every attack provides: trigger artifacts (`fit`), which training rows to
poison (`poison_index`), and how the shared trainer trains with it (`training_plan`:
batches, the loss of a batch, an update after each step).

A trigger holds tensors only, so it is saved next to the attacked model (as
safetensors) and rebuilt in any later process: the poisoned test set is a pure
function of (test set, trigger). Pattern triggers (BadNets, Blended, SIG, LF) run
through the fused `apply_trigger` kernel; uint8-to-uint8 triggers (BPP, SSBA) are
`PixelTrigger`s; others (WaNet's warp, InputAware's generators) subclass `Trigger`
and register their kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from bd_kernels import apply_trigger
from torch import Tensor

from bd_core.data.augment import Augment
from bd_core.data.batches import normalized_batch
from bd_core.data.imageset import ImageSet
from bd_core.errors import InvalidRequest, UnsafeModelFile
from bd_core.train import BatchFn, StepFn, cross_entropy_step

TRIGGER_KINDS: dict[str, type[Trigger]] = {}


def trigger_kind(name: str):
    def register(cls: type[Trigger]) -> type[Trigger]:
        cls.kind = name
        TRIGGER_KINDS[name] = cls
        return cls

    return register


class Trigger:
    """How poisoned inputs are made. Subclasses register a kind, hold tensors only
    (`artifacts`) plus JSON-able `settings`, and are rebuilt by `restore` in any process."""

    kind: ClassVar[str]

    def apply(
        self,
        images: Tensor,
        poisoned: Tensor | None,
        mean: Tensor,
        std: Tensor,
        crop_offsets: Tensor | None = None,
        padding: int = 0,
        flip: Tensor | None = None,
    ) -> Tensor:  # pragma: no cover - abstract
        """Normalized float batch of uint8 `images`, with the trigger on rows where `poisoned` is True."""
        raise NotImplementedError

    def artifacts(self) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def check_fits(self, channels: int, size: int) -> None:
        """Raise ValueError unless this trigger poisons the images of a channels x size x size model:
        probed once on a blank image, so every kind (patterns, warp grids, encoders, generators) is
        checked by what it does, when a model file is read rather than in the middle of a run."""
        blank = torch.zeros(1, channels, size, size, dtype=torch.uint8)
        try:
            with torch.no_grad():
                out = self.apply(blank, torch.ones(1, dtype=torch.bool), torch.zeros(channels), torch.ones(channels))
        except (RuntimeError, ValueError, IndexError) as e:
            raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        if tuple(out.shape) != tuple(blank.shape):
            raise ValueError(f"it turns a {tuple(blank.shape[1:])} image into {tuple(out.shape[1:])}")

    def bake_rows(self, images: Tensor, poisoned: Tensor) -> tuple[Tensor, Tensor | None]:
        """For a fixed poisoned set: (images, flags) to hand to `apply` batch by batch. A trigger
        that can poison uint8 rows ahead of time does it here once and returns no flags."""
        return images, poisoned

    @classmethod
    def from_saved(cls, artifacts: dict[str, Tensor], settings: dict[str, Any]) -> Trigger:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def restore(artifacts: dict[str, Tensor], settings: dict[str, Any]) -> Trigger:
        cls = TRIGGER_KINDS.get(settings.get("kind", ""))
        if cls is None:
            raise UnsafeModelFile(f"unknown trigger kind {settings.get('kind')!r} in saved artifacts")
        try:
            return cls.from_saved(artifacts, settings)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UnsafeModelFile(f"saved {cls.kind} trigger is incomplete or malformed: {e}") from e


@trigger_kind("pattern")
@dataclass
class PatternTrigger(Trigger):
    """A pattern/mask trigger applied to uint8 images by the fused `apply_trigger` kernel."""

    pattern: Tensor  # [C,H,W] float, 0..255 scale (signed residual for mode "add")
    mask: Tensor  # [1|C,H,W] float in [0,1]
    mode: str = "replace"
    alpha: float = 1.0

    def apply(self, images, poisoned, mean, std, crop_offsets=None, padding=0, flip=None) -> Tensor:
        dev = images.device
        return apply_trigger(
            images,
            poisoned,
            self.pattern.to(dev),
            self.mask.to(dev),
            mode=self.mode,
            alpha=self.alpha,
            mean=mean.to(dev),
            std=std.to(dev),
            crop_offsets=crop_offsets,
            padding=padding,
            flip=flip,
        )

    def artifacts(self) -> dict[str, Tensor]:
        return {"pattern": self.pattern.contiguous(), "mask": self.mask.contiguous()}

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "mode": self.mode, "alpha": self.alpha}

    @classmethod
    def from_saved(cls, artifacts: dict[str, Tensor], settings: dict[str, Any]) -> PatternTrigger:
        return cls(artifacts["pattern"], artifacts["mask"], settings["mode"], float(settings["alpha"]))


class PixelTrigger(Trigger):
    """A trigger that maps uint8 images to uint8 images (BPP's colour squeeze, SSBA's encoder).
    Poisoned rows are transformed first, then cropped/flipped/normalized like clean rows."""

    def poison_pixels(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        """uint8 [N,C,H,W] -> uint8 [N,C,H,W], every row poisoned."""
        raise NotImplementedError

    def poison_rows(self, images: Tensor, poisoned: Tensor, chunk: int = 1024) -> Tensor:
        """A copy of uint8 `images` with the rows flagged in `poisoned` transformed (in chunks, to bound memory)."""
        out = images.clone()
        rows = poisoned.nonzero().squeeze(1)
        for part in rows.split(chunk):
            out[part] = self.poison_pixels(images[part])
        return out

    def bake_rows(self, images: Tensor, poisoned: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.poison_rows(images, poisoned), None  # once, not in every epoch

    def apply(self, images, poisoned, mean, std, crop_offsets=None, padding=0, flip=None) -> Tensor:
        if poisoned is not None and bool(poisoned.any()):
            images = self.poison_rows(images, poisoned)
        return normalized_batch(images, mean, std, crop_offsets, padding, flip)


@dataclass
class TrainingPlan:
    """What the shared trainer needs from an attack: batches, the loss of one batch, and an
    optional update after each optimizer step (e.g. of a trigger generator trained alongside)."""

    make_batch: BatchFn
    step: StepFn = cross_entropy_step
    after_step: Callable[[], None] | None = None


@dataclass(frozen=True)
class Attack:
    """Base of the attack dataclasses; fields of subclasses are the attack's settings."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False  # poison only target-class samples, keep their labels
    training_controlled: ClassVar[bool] = False  # poisons inside the training loop, per batch
    cache_trigger: ClassVar[bool] = False  # fitting is expensive (optimization, networks): keep the result
    trigger_trained_with_model: ClassVar[bool] = False  # the final trigger exists only after training
    preset_settings: ClassVar[dict[str, dict[str, Any]]] = {}  # e.g. CPU-sized settings under preset "quick"
    preset_recipes: ClassVar[dict[str, dict[str, Any]]] = {}  # recipe changes per preset, e.g. more quick epochs

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> Trigger:  # pragma: no cover - abstract
        """The trigger for this training set (patterns, grids, optimized perturbations, networks)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def poison_index(self, train: ImageSet, ratio: float, target: int, generator: torch.Generator) -> Tensor:
        """Bool [N]: the training rows that carry the trigger.

        `ratio` is a fraction of the whole training set (BackdoorBench's pratio);
        dirty-label attacks draw from non-target samples, clean-label ones from the target class.
        """
        check_ratio(ratio)
        if self.training_controlled:  # rows are chosen per batch, in training_batches
            return torch.zeros(len(train), dtype=torch.bool)
        pool = (train.labels == target) if self.clean_label else (train.labels != target)
        candidates = pool.nonzero().squeeze(1)
        count = round(ratio * len(train))
        if count > len(candidates):
            raise InvalidRequest(
                f"poison ratio {ratio} needs {count} {'target-class' if self.clean_label else 'non-target'} "
                f"samples but the training set has {len(candidates)}"
            )
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
        flags = torch.zeros(len(train), dtype=torch.bool)
        flags[chosen] = True
        return flags

    def training_plan(
        self,
        train: ImageSet,
        trigger: Trigger,
        poisoned: Tensor,
        ratio: float,
        target: int,
        augment: Augment,
        device: str,
        seed: int = 0,
    ) -> TrainingPlan:
        """How the shared trainer trains the attacked model; default: cross-entropy on `training_batches`."""
        return TrainingPlan(self.training_batches(train, trigger, poisoned, ratio, target, augment, device))

    def training_batches(
        self,
        train: ImageSet,
        trigger: Trigger,
        poisoned: Tensor,
        ratio: float,
        target: int,
        augment: Augment,
        device: str,
    ) -> BatchFn:
        """make_batch for the shared trainer: data poisoning with a fixed set of poisoned rows."""
        labels = train.labels.clone()
        if not self.clean_label:
            labels[poisoned] = target
        mean, std = train.mean_std()
        images, flags = trigger.bake_rows(train.images.to(device), poisoned.to(device))

        def make_batch(idx: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
            offsets, flip = augment.draw(len(idx), g)
            dev_idx = idx.to(device)
            x = trigger.apply(
                images[dev_idx],
                None if flags is None else flags[dev_idx],
                mean,
                std,
                offsets.to(device),
                augment.padding,
                None if flip is None else flip.to(device),
            )
            return x, labels[idx]

        return make_batch


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise InvalidRequest(f"poison ratio must be in (0, 1), e.g. 0.1 for 10 %, got {ratio}")
