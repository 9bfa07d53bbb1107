"""`bd run` (train or reuse the attacked model, then defend) and `bd defend` (an existing model
only): one path from the options to a stored result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bd_cli.options import (
    Arch,
    Attack,
    AttackSettings,
    DataDir,
    Dataset,
    DefenseName,
    DefenseSettings,
    Device,
    Download,
    Force,
    MitigationIndices,
    OutputFormat,
    Partition,
    PoisonRatio,
    Precision,
    Preset,
    ResultsFile,
    Seed,
    Spc,
    Target,
    TrainingPreset,
    Tune,
    default_store,
    examples,
    resolve_device,
)
from bd_cli.output import Format, emit, err, fail, maps_errors, out, say

RUN_EXAMPLES = examples(
    "bd run --defense ft --arch preact-resnet18 --dataset fashion-mnist --preset quick",
    "bd run --defense clp --arch vgg19 --attack badnets --poison-ratio 0.05 --spc 2 --partition 3",
    "bd run --defense ft --set epochs=20 --set lr=0.005 --format json",
    "bd run --defense bnp+ft --set bnp.u=2.5 --set ft.epochs=5   (BNP, then FT on its output)",
    "bd run --defense clp --tune   (CLP's u chosen from its candidates on the clean images alone)",
    "bd run --defense ft --arch vit   (the ViT; defenses that need BatchNorm or convolutions refuse it)",
    "bd run --defense ft --precision bf16   (FT's fine-tuning in bfloat16: faster where the CPU has AMX)",
)


@maps_errors
def run(
    defense: DefenseName = "ft",
    dataset: Dataset = "fashion-mnist",
    arch: Arch = "preact-resnet18",
    attack: Attack = "badnets",
    poison_ratio: PoisonRatio = 0.1,
    target: Target = 0,
    spc: Spc = 10,
    partition: Partition = 0,
    seed: Seed = 0,
    preset: TrainingPreset = Preset.quick,
    set_: DefenseSettings = None,
    attack_set: AttackSettings = None,
    mitigation_indices: MitigationIndices = None,
    tune: Tune = False,
    precision: Precision = "fp32",
    device: Device = "auto",
    store: ResultsFile = None,
    data_dir: DataDir = None,
    download: Download = False,
    force: Force = False,
    format: OutputFormat = Format.table,
) -> None:
    """Backdoor a model (or reuse the cached one), apply a defense, and report the survey's metrics."""
    from bd_core.attacked import AttackSpec, load_data
    from bd_core.config import parse_assignments

    attack_spec = AttackSpec(
        dataset, arch, attack, poison_ratio, target, seed, preset.value, parse_assignments(attack_set)
    )
    spec = _experiment_spec(attack_spec, defense, tune, spc, partition, set_, mitigation_indices, precision)
    dev = resolve_device(device)
    _run_and_show(spec, load_data(attack_spec.dataset, data_dir, download), dev, store, force, format)


DEFEND_EXAMPLES = examples(
    "bd defend --model ~/.cache/bd/models/<key>/model.safetensors --defense anp",
    "bd defend --defense clp --attack blended --arch vgg19   (the cached model of that attack)",
)


@maps_errors
def defend(
    defense: DefenseName = "ft",
    model: Annotated[
        Path | None,
        typer.Option(
            help="attacked model file written by bd (model.safetensors); else the cached model of the attack options"
        ),
    ] = None,
    attack: Attack = "badnets",
    dataset: Dataset = "fashion-mnist",
    arch: Arch = "preact-resnet18",
    poison_ratio: PoisonRatio = 0.1,
    target: Target = 0,
    seed: Seed = 0,
    preset: TrainingPreset = Preset.quick,
    spc: Spc = 10,
    partition: Partition = 0,
    set_: DefenseSettings = None,
    mitigation_indices: MitigationIndices = None,
    tune: Tune = False,
    precision: Precision = "fp32",
    device: Device = "auto",
    store: ResultsFile = None,
    data_dir: DataDir = None,
    force: Force = False,
    format: OutputFormat = Format.table,
) -> None:
    """Apply a defense to an attacked model that already exists (never trains one).

    Without --model, the attack options name the cached model."""
    from bd_core.attacked import AttackSpec, load_data

    if model is not None:
        attacked, attack_spec = _model_file(model)
    else:
        attacked, attack_spec = _cached_model(
            AttackSpec(dataset, arch, attack, poison_ratio, target, seed, preset.value), data_dir
        )
    spec = _experiment_spec(attack_spec, defense, tune, spc, partition, set_, mitigation_indices, precision)
    dev = resolve_device(device)
    _run_and_show(spec, load_data(attack_spec.dataset, data_dir), dev, store, force, format, attacked)


def _model_file(path: Path):
    from bd_core.attacked import AttackSpec
    from bd_core.errors import BdError
    from bd_core.store.models import load_model

    if not path.exists():
        fail(f"--model {path}: no such file (bd attack prints where models are saved)")
    attacked = load_model(path)
    if not isinstance(attacked.meta.get("attack"), dict):
        fail(
            f"--model {path}: its metadata has no 'attack' section, so bd cannot tell which backdoor to measure; "
            "use a file written by `bd attack` or `bd import`"
        )
    try:
        return attacked, AttackSpec.from_config(attacked.meta["attack"])
    except BdError as e:
        fail(f"--model {path}: {e}")


def _cached_model(spec, data_dir: Path | None):
    from bd_core.attacked import load_data
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache
    from bd_core.store.models import load_model

    spec = spec.for_data(load_data(spec.dataset, data_dir))
    path = ModelCache(cache_root() / "models").get_path(spec.key)
    if path is None:
        fail(
            f"no cached attacked model for {spec.attack} on {spec.dataset}/{spec.arch} ({spec.poison_ratio:.0%}, "
            f"preset {spec.preset}); train it with `bd attack` with the same options, or pass --model FILE"
        )
    return load_model(path), spec


def _experiment_spec(attack_spec, defense, tune, spc, partition, settings, indices_file, precision):
    from bd_core.config import parse_assignments
    from bd_core.data.mitigation import read_indices
    from bd_defenses import with_tuning

    from bd_cli.runner import ExperimentSpec

    indices = read_indices(indices_file) if indices_file else None
    return ExperimentSpec(
        attack_spec,
        with_tuning(defense) if tune else defense,
        spc,
        partition,
        parse_assignments(settings),
        indices,
        precision,
    )


def _run_and_show(spec, data, device: str, store: Path | None, force: bool, format: Format, attacked=None) -> None:
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache, ResultStore

    from bd_cli.runner import run_experiment

    with ResultStore(store or default_store()) as results:
        record = run_experiment(spec, data, ModelCache(cache_root() / "models"), results, device, force, attacked)
        record["store"] = str(results.path)
    emit(record, format, lambda: print_result(record))


METRIC_LABELS = (("acc", "ACC (clean accuracy)"), ("asr", "ASR (attack success)"), ("ra", "RA (recovery accuracy)"))


def print_result(r: dict) -> None:
    title = (
        f"{r['defense']} vs {r['attack']} ({r['poison_ratio']:.0%}) on {r['dataset']}/{r['arch']}, "
        f"spc {r['spc']}, partition {r['partition']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("before defense", justify="right")
    table.add_column("after defense", justify="right")
    for name, label in METRIC_LABELS:
        table.add_row(label, f"{r[name + '_pre']:.2%}", f"{r[name + '_post']:.2%}")
    out.print(table)
    out.print(f"ARR (accuracy reduction ratio)  {r['arr']:.4f}   (lower is better)")
    out.print(f"RDR (recovery difference ratio) {r['rdr']:.4f}   (lower is better)")
    details = r.get("details") or {}
    out.print(f"defense time {r['defense_seconds']:.1f} s; what it did: {json.dumps(details.get('defense', {}))}")
    for note in details.get("approximations", []):
        out.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    for warning in details.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)
    say(f"stored as {r['key']} in {r.get('store', '')}{' (already there; not rerun)' if r.get('skipped') else ''}")
