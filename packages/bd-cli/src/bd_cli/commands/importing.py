"""`bd import`: an attacked model made by BackdoorBench (or the survey's fork) as a bd model file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bd_cli.options import Device, OutputFormat, examples, resolve_device
from bd_cli.output import Format, emit, maps_errors, out, say, warn

EXAMPLES = examples(
    "bd import ../BackdoorBenchmark/record/badnet_preactresnet18_pratio_0.1 --data-dir ~/data",
    "bd import record/blended_vgg/attack_result.pt --out blended-vgg.safetensors",
    "bd defend --model imported.safetensors --defense clp --mitigation-indices index.txt",
)


@maps_errors
def import_(
    record: Annotated[Path, typer.Argument(help="BackdoorBench record folder, or its attack_result.pt")],
    output: Annotated[
        Path | None,
        typer.Option("--out", help="bd model file to write [default: ~/.cache/bd/imported/<sha>/model.safetensors]"),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="root holding the dataset the record was made on (its test set is evaluated)")
    ] = None,
    resource_dir: Annotated[
        Path | None,
        typer.Option(
            help="the tool's resource/ folder, where BadNets/Blended trigger files are [default: next to record/]"
        ),
    ] = None,
    device: Device = "auto",
    format: OutputFormat = Format.table,
) -> None:
    """Turn an attacked model made by BackdoorBench (or the survey's fork) into a bd model file.

    Nothing in the record is executed: its pickles are read with an allowlist of tensors, arrays,
    images and plain values. The state dict is loaded strictly into bd's architecture, the trigger is
    the record's own, and bd's ACC/ASR/RA are printed next to the values the record reports."""
    from bd_core.interop.backdoorbench import RESULT_FILE, file_sha256
    from bd_core.interop.importer import import_record
    from bd_core.paths import cache_root

    dev = resolve_device(device)
    if output is None:
        source = record / RESULT_FILE if record.is_dir() else record
        digest = file_sha256(source)[:16] if source.is_file() else "missing"
        output = cache_root() / "imported" / digest / "model.safetensors"
    done = import_record(record, output, data_dir, resource_dir, dev)
    info = {
        "model_file": str(done.path),
        "arch": done.meta["arch"],
        "attack": done.meta["attack"]["attack"],
        "dataset": done.meta["attack"]["dataset"],
        "trigger": done.trigger_source,
        **done.metrics.as_dict(),
        "reported": done.record.reported,
    }

    def show_table() -> None:
        table = Table(
            title=f"imported {done.record.model_name} ({done.record.attack}) from {done.record.path}",
            title_justify="left",
        )
        for column, justify in (("metric", "left"), ("measured by bd", "right"), ("reported by the record", "right")):
            table.add_column(column, justify=justify)
        for name in ("acc", "asr", "ra"):
            reported = done.record.reported.get(name)
            table.add_row(name.upper(), f"{info[name]:.2%}", "-" if reported is None else f"{reported:.2%}")
        out.print(table)
        say(f"trigger: {done.trigger_source}")
        gaps = [
            n
            for n in ("acc", "asr", "ra")
            if n in done.record.reported and abs(info[n] - done.record.reported[n]) > 0.01
        ]
        if gaps:
            warn(
                f"{', '.join(g.upper() for g in gaps)} differ from the record by more than 1 point: is --data-dir "
                "the data the record was made on?"
            )
        say(f"saved to {done.path}  (bd defend --model {done.path} --defense ...)")

    emit(info, format, show_table)
