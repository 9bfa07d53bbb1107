"""`bd show`: a PNG grid of what an attack does to a few test images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bd_cli.options import AttackSettings, DataDir, examples
from bd_cli.output import fail, maps_errors, say

EXAMPLES = examples(
    "bd show --attack blended --dataset fashion-mnist",
    "bd show --attack wanet --dataset cifar10 --out docs/img/wanet-cifar10.png",
    "bd show --attack inputaware   (its generator is trained with the classifier: uses or trains that model)",
    "bd show --attack inputaware --model ~/.cache/bd/models/<key>/model.safetensors",
)


@maps_errors
def show(
    attack: Annotated[str, typer.Option(help="attack to draw (see `bd list attacks`)")] = "badnets",
    dataset: Annotated[str, typer.Option(help="dataset whose test images are poisoned")] = "fashion-mnist",
    target: Annotated[int, typer.Option(help="target class (its images are not shown)")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the trigger (random attacks such as WaNet)")] = 0,
    attack_set: AttackSettings = None,
    model: Annotated[
        Path | None, typer.Option(help="draw the trigger saved in this attacked model file instead")
    ] = None,
    output: Annotated[Path | None, typer.Option("--out", help="PNG to write [default: <attack>-<dataset>.png]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write a PNG grid: 8 clean test images, their poisoned versions, and the amplified difference."""
    from bd_core.attacks import canonical_attack
    from bd_core.config import parse_assignments
    from bd_core.data import canonical_dataset, load_dataset

    from bd_cli.show import save_attack_grid

    name, ds = canonical_attack(attack), canonical_dataset(dataset)
    if model is not None and not model.exists():
        fail(f"--model {model}: no such file (bd attack prints where models are saved)")
    train, test = load_dataset(ds, "train", root=data_dir), load_dataset(ds, "test", root=data_dir)
    path = output or Path(f"{name}-{ds}.png")
    peak = save_attack_grid(path, name, train, test, target, seed, parse_assignments(attack_set), model)
    say(f"wrote {path} (rows: clean, poisoned, |difference| x{255 / max(peak, 1):.1f}; largest change {peak}/255)")
