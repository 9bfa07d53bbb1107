"""`bd grid`: a grid of experiments, resumably, on this machine or a Ray cluster; `--estimate`
projects what it costs, `--calibrate` measures what the projection lacks."""

from __future__ import annotations

from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bd_cli.options import DataDir, Preset, ResultsFile, default_store, examples, numbers, resolve_device, split
from bd_cli.output import Format, emit, err, fail, maps_errors, say, stdout_to_stderr

EXAMPLES = examples(
    "bd grid --attack badnets,blended --defense all --spc 2,10,100 --partitions 10",
    "bd grid --config grids/survey.toml --backend ray --address ray://head:10001 --gpu-share 0.25",
    "bd grid --config grids/survey.toml --estimate --gpus 8   (what it costs, from stored times)",
    "bd grid --defense all --calibrate   (one unit per defense where no time is stored yet)",
    "bd grid --defense ft,clp --set ft.epochs=20 --dry-run",
)


class Backend(str, Enum):
    local = "local"
    ray = "ray"


@maps_errors
def grid(
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML grid file (keys: datasets, archs, attacks, poison_ratios, defenses, spc, partitions, seeds, "
            "preset; tables settings.<defense> and presets.<name>)"
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="comma-separated datasets")] = None,
    arch: Annotated[str | None, typer.Option(help="comma-separated architectures")] = None,
    attack: Annotated[str | None, typer.Option(help="comma-separated attacks")] = None,
    poison_ratio: Annotated[str | None, typer.Option(help="comma-separated poison ratios, e.g. 0.01,0.05,0.1")] = None,
    defense: Annotated[
        str | None,
        typer.Option(
            help="comma-separated defenses, or all (every benchmarked defense); bnp+ft is one combined defense"
        ),
    ] = None,
    spc: Annotated[str | None, typer.Option(help="comma-separated samples per class, e.g. 2,10,100")] = None,
    partitions: Annotated[int | None, typer.Option(help="mitigation partitions 0..N-1 per setting")] = None,
    seed: Annotated[str | None, typer.Option(help="comma-separated seeds")] = None,
    preset: Annotated[Preset | None, typer.Option(help="training preset of the attacked models")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="defense.key=value override (repeatable)")] = None,
    tune: Annotated[
        bool, typer.Option("--tune", help="also run each tunable defense tuned (name/tuned) beside its defaults")
    ] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, or bf16 for the defenses whose training can run in it (FT, FST, NAD, FP, FMP, FT-SAM; the "
            "others stay fp32, said before the run)"
        ),
    ] = "fp32",
    backend: Annotated[
        Backend, typer.Option(help="local: process pool on this machine; ray: Ray tasks")
    ] = Backend.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local Ray instance)")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="local pool size [default: CPU cores, or GPUs / --gpu-share with --device cuda]")
    ] = 0,
    gpu_share: Annotated[
        float | None,
        typer.Option(
            help="fraction of one GPU a unit takes, e.g. 0.25 for four side by side [default: from the peak GPU "
            "memory stored for the grid's archs and presets, else 1]"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (with ray: the cluster's GPUs)")] = "auto",
    store: ResultsFile = None,
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option(help="only count the units and what is already stored")] = False,
    estimate: Annotated[
        bool, typer.Option(help="dry run that projects the grid's time from stored times (see --gpus)")
    ] = False,
    gpus: Annotated[int, typer.Option(help="with --estimate: GPUs the projection spreads GPU time over")] = 8,
    calibrate: Annotated[
        bool, typer.Option(help="run one unit per defense and arch with no stored time on this device, then --estimate")
    ] = False,
    format: Annotated[Format, typer.Option(help="table or json summary")] = Format.table,
) -> None:
    """Run a grid of experiments, resumably: finished units are skipped, failures recorded.

    Units whose worker was lost are reported and left for the next run."""
    from bd_cli.runner import GridSpec

    if partitions is not None and partitions < 1:
        fail(f"--partitions {partitions}: give the number of mitigation partitions, at least 1 (survey: 10)")
    if gpus < 1:
        fail(f"--gpus {gpus}: give the number of GPUs to project onto, at least 1")
    flags = {
        "datasets": split(dataset),
        "archs": split(arch),
        "attacks": split(attack),
        "poison_ratios": numbers("--poison-ratio", poison_ratio, float, "e.g. 0.01,0.05,0.1"),
        "defenses": split(defense),
        "spc": numbers("--spc", spc, int, "e.g. 2,10,100"),
        "partitions": list(range(partitions)) if partitions is not None else None,
        "seeds": numbers("--seed", seed, int, "e.g. 0,1,2"),
        "preset": preset.value if preset else None,
    }
    path = store or default_store()
    spec = (
        GridSpec.from_toml(config, **flags)
        if config
        else GridSpec.build(**{k: v for k, v in flags.items() if v is not None})
    )
    refused: list[str] = []
    notes: list[str] = []
    units = spec.with_overrides(set_ or []).units(tune=tune, refused=refused, precision=precision, notes=notes)
    for line in refused:
        err.print(f"left out: {line}", highlight=False)
    for line in notes:
        err.print(line, highlight=False)
    # a Ray driver need not have the GPUs its cluster has: the cluster decides auto and checks cuda
    dev = device if backend is Backend.ray and device != "cpu" and not (dry_run or estimate) else resolve_device(device)
    if dry_run or estimate:  # reads the store if there is one, creates and changes nothing
        from bd_cli.commands.grid_estimate import show_estimate

        show_estimate(units, path, data_dir, dev, gpus if estimate else 0, format)
        return
    if calibrate:
        from bd_cli.commands.grid_estimate import calibration

        units = calibration(units, path, dev)
        say(f"calibrating: {len(units)} units (one per defense and arch with no stored time on this device)")
    report = _run(units, path, backend, address, workers, gpu_share, dev, data_dir)
    _show_report(report, path, format)
    if calibrate:
        from bd_cli.commands.grid_estimate import show_estimate

        show_estimate(units, path, data_dir, dev, gpus, format)
    if report.failed or report.lost:
        raise typer.Exit(1)  # the other units ran and are stored; the exit status says not all did


def _run(units, path: Path, backend: Backend, address, workers: int, gpu_share, device: str, data_dir):
    from bd_core.paths import cache_root
    from bd_core.progress import make_progress
    from bd_core.store import ResultStore
    from bd_core.threads import withdraw

    from bd_cli.runner import bind_units, choose_runner, run_grid, sigterm_as_interrupt

    stored_now = 0
    quiet = stdout_to_stderr(_ray_shutdown) if backend is Backend.ray else nullcontext()
    try:
        with sigterm_as_interrupt(), quiet, ResultStore(path) as results:
            units = bind_units(units, data_dir)  # bound once: run_grid keeps these (and their cached keys)
            done = sum(results.has(u.key) for u in units)
            share = gpu_share if gpu_share is not None else _default_share(units, results, device)
            runner, threads, device = choose_runner(backend.value, address, workers, device, share)
            withdraw()  # this process only waits for the workers: they share the cores
            with make_progress() as progress:
                task = progress.add_task("grid", total=len(units) - done, status="")

                def advance(row: dict) -> None:
                    nonlocal stored_now
                    stored_now += 1
                    progress.update(task, advance=1, status=f"{row['defense']}/{row['attack']}: {row['status']}")

                return run_grid(
                    units,
                    results,
                    cache_root() / "models",
                    runner,
                    device=device,
                    data_dir=data_dir,
                    threads=threads,
                    on_result=advance,
                )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; the units that were running are run again next time
        fail(
            f"stopped: {stored_now} results stored by this run in {path}; the same command resumes "
            "(stored units are skipped)",
            code=130,
        )


def _ray_shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _default_share(units, results, device: str) -> float:
    """The GPU share from the largest peak memory stored for the grid's archs and presets."""
    if not device.startswith("cuda"):
        return 1.0
    import torch

    from bd_cli.runner.placement import default_share

    shapes = {(u.attack.arch, u.attack.preset) for u in units}
    peaks = [
        (r.get("details") or {}).get("peak_gpu_memory_mb")
        for r in results.query(status="ok")
        if (r["arch"], r["preset"]) in shapes
    ]
    memory = torch.cuda.get_device_properties(0).total_memory / 2**20 if torch.cuda.is_available() else None
    share, why = default_share(peaks, memory)
    err.print(f"--gpu-share {share:g}: {why}", highlight=False)
    return share


def _show_report(report, path: Path, format: Format) -> None:
    def show_table() -> None:
        say(
            f"{report.total} units: {report.ok} ran, {report.skipped} already stored, {report.failed} failed"
            + (f", {report.lost} lost (rerun to complete them)" if report.lost else "")
            + (
                f", {report.retried_alone} retried alone after running out of GPU memory"
                if report.retried_alone
                else ""
            )
            + f"; {report.attacks_trained} attacked models trained; results in {path}"
        )
        for line in report.failures[:20]:
            say(f"[red]failed:[/red] {line}")
        for line in report.weak_attacks:
            say(f"[yellow]warning:[/yellow] {line}")

    emit({**report.__dict__, "store": str(path)}, format, show_table)
