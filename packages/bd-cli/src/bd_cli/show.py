"""`bd show`: a PNG grid of what an attack does — clean images, poisoned images, and the
amplified difference — for a handful of non-target test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from bd_core.attacked import AttackSpec, DataBundle, fitted_trigger, obtain_attacked_model, training_subset
from bd_core.attacks import Trigger
from bd_core.data import ImageSet
from bd_core.errors import InvalidRequest
from bd_core.paths import cache_root
from bd_core.progress import log
from bd_core.store import ModelCache, load_model
from PIL import Image


def to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Normalized [N,C,H,W] back to uint8 [N,H,W,C]."""
    pixels = (x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)) * 255
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def attack_grid(
    attack_name: str,
    train: ImageSet,
    test: ImageSet,
    target: int = 0,
    count: int = 8,
    seed: int = 0,
    scale: int = 4,
    preset: str = "quick",
    settings: dict | None = None,
    trigger: Trigger | None = None,
) -> tuple[Image.Image, float]:
    """(grid image, largest pixel difference). Rows: clean, poisoned, |difference| stretched to full range.

    The trigger is fitted on the preset's training images exactly as for training, and
    expensive ones (LF, SSBA) come from the same cache, so the picture shows the trained
    trigger. A trigger trained together with the classifier (InputAware's generator) is
    taken from the attacked model (10 % poisoning), which is trained first if not cached."""
    if trigger is None:
        spec = AttackSpec(train.info.name, "preact-resnet18", attack_name, 0.1, target, seed, preset, settings or {})
        trigger = trained_trigger(spec, train, test)
    rows = (test.labels != target).nonzero().squeeze(1)[:count]
    mean, std = test.mean_std()
    clean = to_uint8(trigger.apply(test.images[rows], None, mean, std), mean, std)
    poisoned = to_uint8(trigger.apply(test.images[rows], torch.ones(len(rows), dtype=torch.bool), mean, std), mean, std)
    diff = np.abs(poisoned.astype(np.int16) - clean.astype(np.int16))
    peak = int(diff.max())
    amplified = (diff * (255.0 / max(peak, 1))).astype(np.uint8)
    tiles = np.concatenate([np.concatenate(list(r), axis=1) for r in (clean, poisoned, amplified)], axis=0)
    if tiles.shape[-1] == 1:
        tiles = tiles[..., 0]
    image = Image.fromarray(tiles).convert("RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    row_names = ["clean", f"poisoned ({attack_name})", f"|difference| x{255 / max(peak, 1):.0f}"]
    column_names = [test.info.classes[int(test.labels[r])] for r in rows]
    return labelled(image, row_names, column_names), peak


def labelled(grid: Image.Image, row_names: list[str], column_names: list[str]) -> Image.Image:
    """The grid with its row names on the left and column names on top, drawn into the PNG."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    left, top = 170, 24
    out = Image.new("RGB", (grid.width + left, grid.height + top), "white")
    out.paste(grid, (left, top))
    draw = ImageDraw.Draw(out)
    cell_h, cell_w = grid.height // len(row_names), grid.width // len(column_names)
    for i, name in enumerate(row_names):
        draw.text((6, top + i * cell_h + cell_h // 2), name, fill="black", font=font, anchor="lm")
    for j, name in enumerate(column_names):
        draw.text((left + j * cell_w + cell_w // 2, top // 2), name[:14], fill="black", font=font, anchor="mm")
    return out


def trained_trigger(spec: AttackSpec, train: ImageSet, test: ImageSet) -> Trigger:
    attack = spec.build_attack()
    if not attack.trigger_trained_with_model:
        return fitted_trigger(attack, training_subset(train, spec.recipe, spec.seed), spec)
    log(f"the {spec.attack} trigger is trained with the classifier: taking it from the attacked model")
    attacked, _ = obtain_attacked_model(spec, DataBundle(train, test), ModelCache(cache_root() / "models"))
    return attacked.trigger


def save_attack_grid(
    path: Path,
    attack_name: str,
    train: ImageSet,
    test: ImageSet,
    target: int = 0,
    seed: int = 0,
    settings: dict | None = None,
    model_file: Path | None = None,
) -> int:
    """Write the grid; with `model_file`, the trigger saved in that attacked model is drawn."""
    trigger = None
    if model_file is not None:
        attacked = load_model(model_file)
        size, channels = attacked.meta["image_size"], attacked.meta["in_channels"]
        if (size, channels) != (test.image_size, test.channels):
            raise InvalidRequest(
                f"{model_file} was trained on {channels}-channel {size} px images, but {test.info.name} has "
                f"{test.channels}-channel {test.image_size} px; pass its --dataset"
            )
        trigger = attacked.trigger
    image, peak = attack_grid(attack_name, train, test, target, seed=seed, settings=settings, trigger=trigger)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return peak
