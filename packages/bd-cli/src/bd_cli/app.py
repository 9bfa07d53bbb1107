"""`bd`: train attacked models, apply defenses, measure ACC/ASR/RA/ARR/RDR.

Torch and the bd packages are imported inside commands so that `bd --help` is instant.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def _no_type_for_flags() -> None:
    """Typer's rich help prints `<bool>` beside every on/off flag, --help included; a flag takes no
    value, so its type column is left empty."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # a typer without this hook (seen on 0.2x builds): its help stays as it is
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_no_type_for_flags()


from bd_cli import quiet_library_warnings  # noqa: E402

quiet_library_warnings()

app = typer.Typer(
    name="bd",
    help="Tell whether a backdoor defense actually repairs a compromised image classifier.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"


class Preset(str, Enum):
    quick = "quick"
    paper = "paper"


# Options that several commands share, declared once.
DefenseName = Annotated[str, typer.Option(
    "--defense", help="defense to apply (see `bd list defenses`); several joined by + run in sequence, "
                      "e.g. bnp+ft with --set ft.epochs=5")]
DefenseSettings = Annotated[list[str] | None, typer.Option(
    "--set", help="defense hyperparameter override key=value (repeatable; part.key=value for bnp+ft)")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")]
ResultsFile = Annotated[Path | None, typer.Option(help="SQLite results file [default: ~/.cache/bd/results.sqlite]")]
DataDir = Annotated[Path | None, typer.Option(
        help="dataset root (default: $BD_DATA, then Debian's /usr/share/datasets)")]
Download = Annotated[bool, typer.Option(help="download the dataset with torchvision if it is missing")]
Force = Annotated[bool, typer.Option(help="run again even if this experiment is already stored")]
Tune = Annotated[bool, typer.Option(
    "--tune", help="choose each defense's decisive setting from its candidates using only the clean mitigation "
    "images (held-out accuracy, agreement, entropy); stored as e.g. clp/tuned")]
OutputFormat = Annotated[Format, typer.Option(help="table for people, json for programs")]
Precision = Annotated[str, typer.Option(
    help="fp32, or bf16: the defense's training steps under bfloat16 autocast (FT, FST, NAD, FP, FMP, "
    "FT-SAM; several times faster on CPUs with AMX/AVX-512-BF16 and on GPUs; stored under its own key)")]


def emit(data: object, format: Format, show_table) -> None:  # noqa: ANN001
    """The one output path of every command: JSON for programs, else the command's table."""
    if format is Format.json:
        out.print_json(json.dumps(data, default=str))
    else:
        show_table()


# attack settings beyond the paper's defaults, e.g. a shorter SSBA encoder training on a CPU
AttackSettings = Annotated[
    list[str] | None,
    typer.Option("--attack-set", help="attack setting override key=value (repeatable; see `bd list attacks`)"),
]


# the defender's images given explicitly, e.g. the same D_m another toolkit used
MitigationIndices = Annotated[
    Path | None,
    typer.Option(help="file of training-split row indices to use as the mitigation set (integers separated by "
                      "spaces, commas or newlines, or a JSON list); replaces --spc/--partition's random draw"),
]


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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


@app.command(
    epilog="Examples:\n\n"
    "  bd run --defense ft --arch preact-resnet18 --dataset fashion-mnist --preset quick\n\n"
    "  bd run --defense clp --arch vgg19 --attack badnets --poison-ratio 0.05 --spc 2 --partition 3\n\n"
    "  bd run --defense ft --set epochs=20 --set lr=0.005 --format json\n\n"
    "  bd run --defense bnp+ft --set bnp.u=2.5 --set ft.epochs=5   (BNP, then FT on its output)\n\n"
    "  bd run --defense clp --tune   (CLP's u chosen from its candidates on the clean images alone)\n\n"
    "  bd run --defense ft --arch vit   (the ViT; defenses that need BatchNorm or convolutions refuse it)\n\n"
    "  bd run --defense ft --precision bf16   (FT's fine-tuning in bfloat16: faster where the CPU has AMX)",
)
def run(
    defense: DefenseName = "ft",
    dataset: Annotated[str, typer.Option(
            help="cifar10, gtsrb, tiny-imagenet, fashion-mnist or synthetic")] = "fashion-mnist",
    arch: Annotated[str, typer.Option(
            help="preact-resnet18, vgg19-bn (vgg19), efficientnet-b3, mobilenetv3-large, vit")] = "preact-resnet18",
    attack: Annotated[str, typer.Option(help="attack that backdoors the model (see `bd list attacks`)")] = "badnets",
    poison_ratio: Annotated[float, typer.Option(
            help="fraction of training images poisoned (survey: 0.01, 0.05, 0.1)")] = 0.1,
    target: Annotated[int, typer.Option(help="attack target class (all-to-one)")] = 0,
    spc: Annotated[int, typer.Option(help="clean mitigation images per class (survey: 2, 10, 100)")] = 10,
    partition: Annotated[int, typer.Option(help="which random mitigation set (survey: 0-9)")] = 0,
    seed: Annotated[int, typer.Option(help="seed of attack training and the defense")] = 0,
    preset: Annotated[Preset, typer.Option(
            help="quick: CPU-sized training; paper: BackdoorBench's recipe (GPU)")] = Preset.quick,
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
    from bd_core.data.mitigation import read_indices
    from bd_core.errors import BdError
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache, ResultStore
    from bd_defenses import with_tuning

    from bd_cli.experiment import ExperimentSpec, UnitFailed, run_experiment

    try:
        attack_spec = AttackSpec(dataset, arch, attack, poison_ratio, target, seed, preset.value,
                                 parse_assignments(attack_set))
        indices = read_indices(mitigation_indices) if mitigation_indices else None
        spec = ExperimentSpec(attack_spec, with_tuning(defense) if tune else defense, spc, partition,
                              parse_assignments(set_), indices, precision)
        dev = resolve_device(device)
        data = load_data(attack_spec.dataset, data_dir, download)
        with ResultStore(store or default_store()) as results:
            record = run_experiment(spec, data, ModelCache(cache_root() / "models"), results, dev, force)
            record["store"] = str(results.path)
    except BdError as e:
        fail(str(e))
    except UnitFailed as e:
        fail(str(e), code=1)
    emit(record, format, lambda: print_result(record))


def print_result(r: dict) -> None:
    title = (f"{r['defense']} vs {r['attack']} ({r['poison_ratio']:.0%}) on {r['dataset']}/{r['arch']}, "
             f"spc {r['spc']}, partition {r['partition']}")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("before defense", justify="right")
    table.add_column("after defense", justify="right")
    for name, label in (("acc", "ACC (clean accuracy)"), ("asr", "ASR (attack "
                                                          "success)"), ("ra", "RA (recovery accuracy)")):
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
    out.print(f"stored as {r['key']} in "
              f"{r.get('store', '')}{' (already there; not rerun)' if r.get('skipped') else ''}", soft_wrap=True)


@app.command(
    epilog="Examples:\n\n  bd show --attack blended --dataset fashion-mnist\n\n"
    "  bd show --attack wanet --dataset cifar10 --out docs/img/wanet-cifar10.png\n\n"
    "  bd show --attack inputaware   (its generator is trained with the classifier: uses or trains that model)\n\n"
    "  bd show --attack inputaware --model ~/.cache/bd/models/<key>/model.safetensors",
)
def show(
    attack: Annotated[str, typer.Option(help="attack to draw (see `bd list attacks`)")] = "badnets",
    dataset: Annotated[str, typer.Option(help="dataset whose test images are poisoned")] = "fashion-mnist",
    target: Annotated[int, typer.Option(help="target class (its images are not shown)")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the trigger (random attacks such as WaNet)")] = 0,
    attack_set: AttackSettings = None,
    model: Annotated[Path | None, typer.Option(
            help="draw the trigger saved in this attacked model file instead")] = None,
    output: Annotated[Path | None, typer.Option("--out", help="PNG to write [default: <attack>-<dataset>.png]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write a PNG grid: 8 clean test images, their poisoned versions, and the amplified difference."""
    from bd_core.attacks import canonical_attack
    from bd_core.config import parse_assignments
    from bd_core.data import canonical_dataset, load_dataset
    from bd_core.errors import BdError

    from bd_cli.show import save_attack_grid

    try:
        name, ds = canonical_attack(attack), canonical_dataset(dataset)
        if model is not None and not model.exists():
            fail(f"--model {model}: no such file (bd attack prints where models are saved)")
        train, test = load_dataset(ds, "train", root=data_dir), load_dataset(ds, "test", root=data_dir)
        path = output or Path(f"{name}-{ds}.png")
        peak = save_attack_grid(path, name, train, test, target, seed, parse_assignments(attack_set), model)
    except BdError as e:
        fail(str(e))
    out.print(f"wrote {path} (rows: clean, poisoned, |difference| x{255 / max(peak, 1):.1f}; largest change "
              f"{peak}/255)")


@app.command(
    epilog="Examples:\n\n"
    "  bd attack --attack blended --arch preact-resnet18 --dataset fashion-mnist\n\n"
    "  bd attack --attack wanet --poison-ratio 0.05 --preset paper --device cuda --format json\n\n"
    "  bd attack --attack ssba --attack-set steps=500   (a shorter encoder training than the quick preset's)",
)
def attack(
    attack: Annotated[str, typer.Option(help="attack (see `bd list attacks`)")] = "badnets",
    dataset: Annotated[str, typer.Option(help="dataset to poison")] = "fashion-mnist",
    arch: Annotated[str, typer.Option(help="architecture")] = "preact-resnet18",
    poison_ratio: Annotated[float, typer.Option(help="fraction of training images poisoned")] = 0.1,
    target: Annotated[int, typer.Option(help="target class (all-to-one)")] = 0,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    preset: Annotated[Preset, typer.Option(help="quick (CPU) or paper (GPU) training recipe")] = Preset.quick,
    attack_set: AttackSettings = None,
    device: Device = "auto",
    data_dir: DataDir = None,
    download: Download = False,
    format: OutputFormat = Format.table,
) -> None:
    """Train an attacked model (or find it in the cache) and report its ACC, ASR and RA."""
    from bd_core.attacked import AttackSpec, load_data, obtain_attacked_model, weak_attack_warning
    from bd_core.config import parse_assignments
    from bd_core.errors import BdError
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache

    try:
        spec = AttackSpec(dataset, arch, attack, poison_ratio, target, seed, preset.value,
                          parse_assignments(attack_set))
        dev = resolve_device(device)
        cache = ModelCache(cache_root() / "models")
        attacked, hit = obtain_attacked_model(spec, load_data(spec.dataset, data_dir, download), cache, dev)
    except BdError as e:
        fail(str(e))
    key = attacked.meta["cache_key"]
    warning = weak_attack_warning(attacked.meta["metrics"]["asr"])
    info = {"key": key, "model_file": str(cache.path(key)), "cached_before": hit, **attacked.meta["metrics"],
            "train_seconds": attacked.meta.get("training", {}).get("train_seconds"), "warning": warning}

    def show_table() -> None:
        out.print(f"{spec.attack} on {spec.dataset}/{spec.arch} ({spec.poison_ratio:.0%}, preset {spec.preset}): "
                  f"ACC {info['acc']:.2%}  ASR {info['asr']:.2%}  RA {info['ra']:.2%}", highlight=False)
        out.print(f"{'found in' if hit else 'saved to'} {info['model_file']}  (bd defend --model {info['model_file']})",
                  soft_wrap=True, highlight=False)
        if warning:
            err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)

    emit(info, format, show_table)


@app.command(
    epilog="Examples:\n\n"
    "  bd defend --model ~/.cache/bd/models/<key>/model.safetensors --defense anp\n\n"
    "  bd defend --defense clp --attack blended --arch vgg19   (the cached model of that attack)",
)
def defend(
    defense: DefenseName = "ft",
    model: Annotated[Path | None, typer.Option(
            help="attacked model file written by bd (model.safetensors); else the cached model of the attack "
                "options")] = None,
    attack: Annotated[str, typer.Option(help="attack of the cached model (without --model)")] = "badnets",
    dataset: Annotated[str, typer.Option(help="dataset of the cached model (without --model)")] = "fashion-mnist",
    arch: Annotated[str, typer.Option(help="architecture of the cached model (without --model)")] = "preact-resnet18",
    poison_ratio: Annotated[float, typer.Option(help="poison ratio of the cached model")] = 0.1,
    target: Annotated[int, typer.Option(help="target class of the cached model")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the cached model and of the defense")] = 0,
    preset: Annotated[Preset, typer.Option(help="preset of the cached model")] = Preset.quick,
    spc: Annotated[int, typer.Option(help="clean mitigation images per class")] = 10,
    partition: Annotated[int, typer.Option(help="which random mitigation set")] = 0,
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
    """Apply a defense to an attacked model that already exists (never trains one)."""
    from bd_core.attacked import AttackSpec, load_data
    from bd_core.config import parse_assignments
    from bd_core.data.mitigation import read_indices
    from bd_core.errors import BdError
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache, ResultStore
    from bd_core.store.models import load_model
    from bd_defenses import with_tuning

    from bd_cli.experiment import ExperimentSpec, UnitFailed, run_experiment

    try:
        cache = ModelCache(cache_root() / "models")
        if model is not None:
            if not model.exists():
                fail(f"--model {model}: no such file (bd attack prints where models are saved)")
            attacked = load_model(model)
            if not isinstance(attacked.meta.get("attack"), dict):
                fail(f"--model {model}: its metadata has no 'attack' section, so bd cannot tell which backdoor to "
                     "measure; use a file written by `bd attack` or `bd import`")
            try:
                attack_spec = AttackSpec.from_config(attacked.meta["attack"])
            except BdError as e:
                fail(f"--model {model}: {e}")
        else:
            attack_spec = AttackSpec(dataset, arch, attack, poison_ratio, target, seed, preset.value)
            attack_spec = attack_spec.for_data(load_data(attack_spec.dataset, data_dir))
            path = cache.get_path(attack_spec.key)
            if path is None:
                fail(f"no cached attacked model for {attack_spec.attack} on {attack_spec.dataset}/{attack_spec.arch} "
                     f"({attack_spec.poison_ratio:.0%}, preset {attack_spec.preset}); train it with `bd attack` "
                     "with the same options, or pass --model FILE")
            attacked = load_model(path)
        indices = read_indices(mitigation_indices) if mitigation_indices else None
        spec = ExperimentSpec(attack_spec, with_tuning(defense) if tune else defense, spc, partition,
                              parse_assignments(set_), indices, precision)
        dev = resolve_device(device)
        data = load_data(attack_spec.dataset, data_dir)
        with ResultStore(store or default_store()) as results:
            record = run_experiment(spec, data, cache, results, dev, force, attacked=attacked)
            record["store"] = str(results.path)
    except BdError as e:
        fail(str(e))
    except UnitFailed as e:
        fail(str(e), code=1)
    emit(record, format, lambda: print_result(record))


@app.command(
    "import",
    epilog="Examples:\n\n"
    "  bd import ../BackdoorBenchmark/record/badnet_preactresnet18_pratio_0.1 --data-dir ~/data\n\n"
    "  bd import record/blended_vgg/attack_result.pt --out blended-vgg.safetensors\n\n"
    "  bd defend --model imported.safetensors --defense clp --mitigation-indices index.txt",
)
def import_(
    record: Annotated[Path, typer.Argument(help="BackdoorBench record folder, or its attack_result.pt")],
    output: Annotated[Path | None, typer.Option(
            "--out", help="bd model file to write [default: ~/.cache/bd/imported/<sha>/model.safetensors]")] = None,
    data_dir: Annotated[Path | None, typer.Option(
            help="root holding the dataset the record was made on (its test set is evaluated)")] = None,
    resource_dir: Annotated[Path | None, typer.Option(
            help="the tool's resource/ folder, where BadNets/Blended trigger files are [default: next to "
                "record/]")] = None,
    device: Device = "auto",
    format: OutputFormat = Format.table,
) -> None:
    """Turn an attacked model made by BackdoorBench (or the survey's fork) into a bd model file.

    Nothing in the record is executed: its pickles are read with an allowlist of tensors, arrays,
    images and plain values. The state dict is loaded strictly into bd's architecture, the trigger is
    the record's own, and bd's ACC/ASR/RA are printed next to the values the record reports."""
    from bd_core.errors import BdError
    from bd_core.interop.importer import import_record
    from bd_core.paths import cache_root

    try:
        dev = resolve_device(device)
        if output is None:
            from bd_core.interop.backdoorbench import RESULT_FILE, file_sha256

            source = record / RESULT_FILE if record.is_dir() else record
            digest = file_sha256(source)[:16] if source.is_file() else "missing"
            output = cache_root() / "imported" / digest / "model.safetensors"
        done = import_record(record, output, data_dir, resource_dir, dev)
    except BdError as e:
        fail(str(e))
    info = {"model_file": str(done.path), "arch": done.meta["arch"], "attack": done.meta["attack"]["attack"],
            "dataset": done.meta["attack"]["dataset"], "trigger": done.trigger_source, **done.metrics.as_dict(),
            "reported": done.record.reported}

    def show_table() -> None:
        table = Table(title=f"imported {done.record.model_name} ({done.record.attack}) from {done.record.path}",
                      title_justify="left")
        table.add_column("metric")
        table.add_column("measured by bd", justify="right")
        table.add_column("reported by the record", justify="right")
        for name in ("acc", "asr", "ra"):
            reported = done.record.reported.get(name)
            table.add_row(name.upper(), f"{info[name]:.2%}", "-" if reported is None else f"{reported:.2%}")
        out.print(table)
        out.print(f"trigger: {done.trigger_source}", soft_wrap=True, highlight=False)
        gaps = [n for n in ("acc", "asr",
                            "ra") if n in done.record.reported and abs(info[n] - done.record.reported[n]) > 0.01]
        if gaps:
            out.print(f"[yellow]warning:[/yellow] {', '.join(g.upper() for g in gaps)} differ from the record by more "
                      f"than "
                      "1 point: is --data-dir the data the record was made on?", soft_wrap=True)
        out.print(f"saved to {done.path}  (bd defend --model {done.path} --defense "
                  f"...)", soft_wrap=True, highlight=False)

    emit(info, format, show_table)


@app.command(
    epilog="Examples:\n\n"
    "  bd report --out report/\n\n"
    "  bd report --where dataset=cifar10 --where spc=2,10 --no-pdf\n\n"
    "  bd report --pool   (one set of figures over all datasets)",
)
def report(
    output: Annotated[Path, typer.Option(
            "--out", help="folder for figures (PNG, PDF), results.csv/.parquet and summary tables (.md, .csv, "
                ".tex)")] = Path("bd-report"),
    store: ResultsFile = None,
    where: Annotated[list[str] | None, typer.Option(help="filter column=value[,value] (repeatable)")] = None,
    pdf: Annotated[bool, typer.Option(help="also write PDF figures")] = True,
    pool: Annotated[bool, typer.Option(
            help="draw each figure over all datasets together instead of one per dataset")] = False,
) -> None:
    """Draw the survey's figures (3-10) and write summary tables from stored results (read-only)."""
    from bd_core.errors import BdError
    from bd_core.progress import log
    from bd_core.store import ResultStore

    from bd_cli.report import draw_figures, mixed_trainings, parse_filters, select, write_tables

    path = store or default_store()
    try:
        filters = parse_filters(where)
        with ResultStore(path, readonly=True) as results:
            frame = select(results.to_frame(status=None), filters)
    except (ValueError, BdError) as e:
        fail(str(e))
    ok, failed = frame[frame.status == "ok"], frame[frame.status != "ok"]
    if ok.empty:
        fail(f"no successful results in {path} match {where or 'the store'}")
    mixed = sorted(d for d, n in ok.groupby("defense").precision.nunique().items() if n > 1)
    if mixed:  # one box per defense must not pool fp32 and bf16 runs
        fail(f"{', '.join(mixed)} ran in more than one precision in {path}; keep one with --where precision=fp32 "
             "(or precision=bf16)")
    for line in mixed_trainings(ok):
        log(f"[yellow]warning:[/yellow] {line}")
    with _progress_line(f"drawing figures of {len(ok)} results"):
        written = write_tables(ok, failed, output)
        written += draw_figures(ok, output, pdf, pool)
    out.print(f"{len(ok)} results ({ok.defense.nunique()} defenses, {ok.dataset.nunique()} datasets) -> "
              f"{len(written)} files in {output}/", highlight=False)
    out.print((output / "summary.md").read_text(), highlight=False, soft_wrap=True)


def _progress_line(message: str):
    """A status line for work without steps to count (rich's spinner; silent with BD_PROGRESS=0)."""
    from contextlib import nullcontext

    from bd_core.progress import enabled

    return err.status(message) if enabled() else nullcontext()


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _numbers(option: str, value: str | None, kind: type, example: str) -> list | None:
    """A comma list of numbers from the command line; one clear error for anything else."""
    items = _split(value)
    if items is None:
        return None
    try:
        return [kind(v) for v in items]
    except ValueError:
        bad = next(v for v in items if not _parses(kind, v))
        fail(f"{option} {value!r}: {bad!r} is not {'an integer' if kind is int else 'a number'} ({example})")


def _parses(kind: type, value: str) -> bool:
    try:
        kind(value)
        return True
    except ValueError:
        return False


class Backend(str, Enum):
    local = "local"
    ray = "ray"


@app.command(
    epilog="Examples:\n\n"
    "  bd grid --attack badnets,blended --defense all --spc 2,10,100 --partitions 10\n\n"
    "  bd grid --config grids/survey.toml --backend ray --address ray://head:10001\n\n"
    "  bd grid --defense ft,clp --set ft.epochs=20 --dry-run",
)
def grid(
    config: Annotated[Path | None, typer.Option(
            help="TOML grid file (keys: datasets, archs, attacks, poison_ratios, defenses, spc, partitions, seeds, "
                "preset; tables settings.<defense> and presets.<name>)")] = None,
    dataset: Annotated[str | None, typer.Option(help="comma-separated datasets")] = None,
    arch: Annotated[str | None, typer.Option(help="comma-separated architectures")] = None,
    attack: Annotated[str | None, typer.Option(help="comma-separated attacks")] = None,
    poison_ratio: Annotated[str | None, typer.Option(help="comma-separated poison ratios, e.g. 0.01,0.05,0.1")] = None,
    defense: Annotated[str | None, typer.Option(
            help="comma-separated defenses, or all (every benchmarked defense); bnp+ft is one combined "
                "defense")] = None,
    spc: Annotated[str | None, typer.Option(help="comma-separated samples per class, e.g. 2,10,100")] = None,
    partitions: Annotated[int | None, typer.Option(help="mitigation partitions 0..N-1 per setting")] = None,
    seed: Annotated[str | None, typer.Option(help="comma-separated seeds")] = None,
    preset: Annotated[Preset | None, typer.Option(help="training preset of the attacked models")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="defense.key=value override (repeatable)")] = None,
    tune: Annotated[bool, typer.Option(
            "--tune", help="also run each tunable defense tuned (name/tuned) beside its defaults")] = False,
    precision: Annotated[str, typer.Option(
            help="fp32, or bf16 for the defenses whose training can run in it (FT, FST, NAD, FP, FMP, "
                "FT-SAM; the others stay fp32, said before the run)")] = "fp32",
    backend: Annotated[Backend, typer.Option(
            help="local: process pool on this machine; ray: Ray tasks")] = Backend.local,
    address: Annotated[str | None, typer.Option(
            help="Ray cluster address (default: start a local Ray instance)")] = None,
    workers: Annotated[int, typer.Option(help="local pool size [default: CPU cores, or GPUs with --device cuda]")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    store: ResultsFile = None,
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option(help="only count the units and what is already stored")] = False,
    format: Annotated[Format, typer.Option(help="table or json summary")] = Format.table,
) -> None:
    """Run a grid of experiments, resumably: finished units are skipped, failures recorded."""

    from bd_core.errors import BdError
    from bd_core.paths import cache_root
    from bd_core.progress import make_progress
    from bd_core.store import ResultStore
    from bd_core.threads import withdraw

    from bd_cli.grid import GridSpec, bind_units, choose_runner, run_grid, sigterm_as_interrupt

    if partitions is not None and partitions < 1:
        fail(f"--partitions {partitions}: give the number of mitigation partitions, at least 1 (survey: 10)")
    flags = {
        "datasets": _split(dataset), "archs": _split(arch), "attacks": _split(attack),
        "poison_ratios": _numbers("--poison-ratio", poison_ratio, float, "e.g. 0.01,0.05,0.1"),
        "defenses": _split(defense), "spc": _numbers("--spc", spc, int, "e.g. 2,10,100"),
        "partitions": list(range(partitions)) if partitions is not None else None,
        "seeds": _numbers("--seed", seed, int, "e.g. 0,1,2"), "preset": preset.value if preset else None,
    }
    path = store or default_store()
    stored_now = 0
    try:
        if config:
            spec = GridSpec.from_toml(config, **flags)
        else:
            spec = GridSpec.build(**{k: v for k, v in flags.items() if v is not None})
        refused: list[str] = []
        notes: list[str] = []
        units = spec.with_overrides(set_ or []).units(tune=tune, refused=refused, precision=precision, notes=notes)
        for line in refused:
            err.print(f"left out: {line}", highlight=False)
        for line in notes:
            err.print(line, highlight=False)
        dev = resolve_device(device)
        if dry_run:  # reads the store if there is one, creates and changes nothing
            units = bind_units(units, data_dir)
            done = 0
            if path.exists():
                with ResultStore(path, readonly=True) as results:
                    done = sum(results.has(u.key) for u in units)
            summary = {"units": len(units), "stored": done, "to_run": len(units) - done,
                       "attacked_models": len({u.attack.key for u in units}), "store": str(path)}
            emit(summary, format, lambda: out.print(
                f"{summary['units']} units ({summary['attacked_models']} attacked models): "
                f"{summary['stored']} already stored in {path}, {summary['to_run']} to run", highlight=False))
            return
        with sigterm_as_interrupt(), ResultStore(path) as results:
            done = sum(results.has(u.key) for u in bind_units(units, data_dir))
            runner, threads = choose_runner(backend.value, address, workers, dev)
            withdraw()  # this process only waits for the workers: they share the cores
            with make_progress() as progress:
                task = progress.add_task("grid", total=len(units) - done, status="")

                def advance(row: dict) -> None:
                    nonlocal stored_now
                    stored_now += 1
                    progress.update(task, advance=1, status=f"{row['defense']}/{row['attack']}: {row['status']}")

                report = run_grid(units, results, cache_root() / "models", runner, device=dev, data_dir=data_dir,
                                  threads=threads, on_result=advance)
    except BdError as e:
        fail(str(e))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; the units that were running are run again next time
        fail(f"stopped: {stored_now} results stored by this run in {path}; the same command resumes "
             "(stored units are skipped)", code=130)
    summary = {**report.__dict__, "store": str(path)}

    def show_table() -> None:
        out.print(f"{report.total} units: {report.ok} ran, {report.skipped} already stored, {report.failed} failed; "
                  f"{report.attacks_trained} attacked models trained; results in {path}", soft_wrap=True)
        for line in report.failures[:20]:
            out.print(f"[red]failed:[/red] {line}", soft_wrap=True, highlight=False)
        for line in report.weak_attacks:
            out.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True, highlight=False)

    emit(summary, format, show_table)
    if report.failed:
        raise typer.Exit(1)  # the other units ran and are stored; the exit status says not all did


@app.command(
    epilog="Examples:\n\n"
    "  bd merge gpu-run/grid.sqlite --into docs/beyond.sqlite\n\n"
    "  bd merge node1.sqlite node2.sqlite   (into the default results file)",
)
def merge(
    sources: Annotated[list[Path], typer.Argument(help="results files to copy rows from (read only)")],
    into: Annotated[Path | None, typer.Option(
            help="results file that receives them [default: ~/.cache/bd/results.sqlite]")] = None,
    format: Annotated[Format, typer.Option(help="table or json summary")] = Format.table,
) -> None:
    """Merge results files: rows of a grid run elsewhere join this store. A finished row already
    here is kept (never overwritten); a failed one gives way to a finished one."""
    from bd_core.errors import BdError
    from bd_core.store import ResultStore

    path = into or default_store()
    summary: dict[str, dict[str, int]] = {}
    try:
        with ResultStore(path) as target:
            for source in sources:
                with ResultStore(source, readonly=True) as rows:
                    summary[str(source)] = target.merge(rows)
            total = target.count()
    except BdError as e:
        fail(str(e))

    def show_table() -> None:
        for source, counts in summary.items():
            out.print(f"{source}: {counts['added']} rows added, {counts['kept']} already in {path}",
                      soft_wrap=True, highlight=False)
        out.print(f"{path} now holds {total} rows", soft_wrap=True, highlight=False)

    emit({"into": str(path), "sources": summary, "rows": total}, format, show_table)


class Listing(str, Enum):
    attacks = "attacks"
    defenses = "defenses"
    models = "models"
    datasets = "datasets"


@app.command("list", epilog="Examples:\n\n  bd list defenses\n\n  bd list models --format json")
def list_(
    what: Annotated[Listing, typer.Argument(help="attacks, defenses, models or datasets")],
    format: OutputFormat = Format.table,
) -> None:
    """List what bd knows, with settings and defaults."""
    rows = _listing(what)
    table = Table()
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in row.values()))
    emit(rows, format, lambda: out.print(table))


def _listing(what: Listing) -> list[dict]:
    if what is Listing.defenses:
        from bd_defenses import DEFENSES, describe

        return [describe(name) for name in sorted(DEFENSES)]
    if what is Listing.attacks:
        from bd_core.attacks import ATTACKS

        return [
            {"name": n, "clean_label": c.clean_label, "training_controlled": c.training_controlled,
             "settings": c().settings(), "quick": {**c.preset_settings.get("quick", {}),
                                                   **c.preset_recipes.get("quick", {})}, "paper": c.paper}
            for n, c in ATTACKS.items()
        ]
    if what is Listing.models:
        from bd_core.models import MODELS

        return [{"name": n, "class": c.__name__, "layers": ", ".join(sorted(c.facts.layer_types))}
                for n, c in MODELS.items()]
    from bd_core.data.datasets import SPECS

    return [{"name": n, "layout": s.layout, "note": s.note} for n, s in SPECS.items()] + [
        {"name": "synthetic", "layout": "generated", "note": "procedural test data"}
    ]


kernels_app = typer.Typer(help="The compiled bd_kernels extension: what is built, how fast it "
                          "is.", no_args_is_help=True)
app.add_typer(kernels_app, name="kernels")


@kernels_app.command("info", epilog="Example:\n\n  bd kernels info --format json")
def kernels_info(format: OutputFormat = Format.table) -> None:
    """Torch version, whether the extension loaded, CPU/CUDA kernels and the CUDA archs built."""
    import bd_kernels
    import torch

    build = bd_kernels.build_info()
    info = {
        "torch": torch.__version__,
        "extension_loaded": bd_kernels.has_extension(),
        "built_with_torch": build.get("built_with_torch", ""),
        "cpu_kernels": bd_kernels.has_extension(),
        "cuda_kernels": bool(build.get("cuda")),
        "cuda_archs": build.get("cuda_archs", ""),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "ops": ["apply_trigger", "channel_stats", "masked_conv2d"],
    }
    if not info["extension_loaded"]:
        info["fallback"] = "pure-torch reference (pip install --no-build-isolation packages/bd-kernels to build)"
    table = Table(show_header=False)
    for key, value in info.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    emit(info, format, lambda: out.print(table))


@kernels_app.command("bench", epilog="Example:\n\n  bd kernels bench --filter channel_stats")
def kernels_bench(
    filter: Annotated[str | None, typer.Option(help="only benchmarks whose name matches (pytest -k)")] = None,
    json_out: Annotated[Path, typer.Option(
            "--json", help="where pytest-benchmark writes its JSON")] = Path("bd-kernels-bench.json"),
) -> None:
    """Run bench/test_kernels.py (pytest-benchmark) from a source checkout and print the ratios."""
    import subprocess

    root = Path(__file__).resolve().parents[4]
    bench = root / "bench" / "test_kernels.py"
    if not bench.exists():
        fail("bd kernels bench needs a source checkout of bd (bench/test_kernels.py not found)")
    cmd = [sys.executable, "-m", "pytest", "-q", str(bench), "-p", "no:cacheprovider", "-o", "addopts=",
           "--benchmark-only", f"--benchmark-json={json_out}"] + (["-k", filter] if filter else [])
    code = subprocess.call(cmd, cwd=root)
    if code == 0:
        subprocess.call([sys.executable, str(root / "bench" / "report.py"), str(json_out)])
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
