"""Options several commands share, each declared once with one help text."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bd_cli.output import Format, fail


class Preset(str, Enum):
    quick = "quick"
    paper = "paper"


# --- the attacked model: one group for run, attack and defend ---------------------------------
Dataset = Annotated[str, typer.Option(help="cifar10, gtsrb, tiny-imagenet, fashion-mnist or synthetic")]
Arch = Annotated[str, typer.Option(help="preact-resnet18, vgg19-bn (vgg19), efficientnet-b3, mobilenetv3-large, vit")]
Attack = Annotated[str, typer.Option(help="attack that backdoors the model (see `bd list attacks`)")]
PoisonRatio = Annotated[float, typer.Option(help="fraction of training images poisoned (survey: 0.01, 0.05, 0.1)")]
Target = Annotated[int, typer.Option(help="attack target class (all-to-one)")]
Seed = Annotated[int, typer.Option(help="seed of attack training and of the defense")]
TrainingPreset = Annotated[Preset, typer.Option(help="quick: CPU-sized training; paper: BackdoorBench's recipe (GPU)")]
AttackSettings = Annotated[
    list[str] | None,
    typer.Option("--attack-set", help="attack setting override key=value (repeatable; see `bd list attacks`)"),
]

# --- the defense and the defender's images --------------------------------------------------
DefenseName = Annotated[
    str,
    typer.Option(
        "--defense",
        help="defense to apply (see `bd list defenses`); several joined by + run in sequence, "
        "e.g. bnp+ft with --set ft.epochs=5",
    ),
]
DefenseSettings = Annotated[
    list[str] | None,
    typer.Option("--set", help="defense hyperparameter override key=value (repeatable; part.key=value for bnp+ft)"),
]
Spc = Annotated[int, typer.Option(help="clean mitigation images per class (survey: 2, 10, 100)")]
Partition = Annotated[int, typer.Option(help="which random mitigation set (survey: 0-9)")]
MitigationIndices = Annotated[
    Path | None,
    typer.Option(
        help="file of training-split row indices to use as the mitigation set (integers separated by spaces, commas "
        "or newlines, or a JSON list); replaces --spc/--partition's random draw"
    ),
]
Tune = Annotated[
    bool,
    typer.Option(
        "--tune",
        help="choose each defense's decisive setting from its candidates using only the clean mitigation "
        "images (held-out accuracy, agreement, entropy); stored as e.g. clp/tuned",
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        help="fp32, or bf16: the defense's training steps under bfloat16 autocast (FT, FST, NAD, FP, FMP, "
        "FT-SAM; several times faster on CPUs with AMX/AVX-512-BF16 and on GPUs; stored under its own key)"
    ),
]

# --- where things are and how they are shown --------------------------------------------------
Device = Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")]
ResultsFile = Annotated[Path | None, typer.Option(help="SQLite results file [default: ~/.cache/bd/results.sqlite]")]
DataDir = Annotated[
    Path | None, typer.Option(help="dataset root (default: $BD_DATA, then Debian's /usr/share/datasets)")
]
Download = Annotated[bool, typer.Option(help="download the dataset with torchvision if it is missing")]
Force = Annotated[bool, typer.Option(help="run again even if this experiment is already stored")]
OutputFormat = Annotated[Format, typer.Option(help="table for people, json for programs")]


def examples(*lines: str) -> str:
    """A command's epilog: its examples, one per paragraph."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def resolve_device(device: str) -> str:
    """The device to compute on; on the CPU, this process also takes its share of the cores
    (bd_core.threads: $BD_THREADS overrides)."""
    import torch
    from bd_core.threads import share_cores

    share_cores()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda asked for but torch sees no GPU; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        fail(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def default_store() -> Path:
    from bd_core.paths import cache_root

    return cache_root() / "results.sqlite"


def split(value: str | None) -> list[str] | None:
    """A comma list from the command line."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def numbers(option: str, value: str | None, kind: type, example: str) -> list | None:
    """A comma list of numbers from the command line; one clear error for anything else."""
    items = split(value)
    if items is None:
        return None
    parsed = []
    for item in items:
        try:
            parsed.append(kind(item))
        except ValueError:
            fail(f"{option} {value!r}: {item!r} is not {'an integer' if kind is int else 'a number'} ({example})")
    return parsed
