"""`bd merge`: rows of results files made elsewhere join this store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bd_cli.options import OutputFormat, default_store, examples
from bd_cli.output import Format, emit, maps_errors, say

EXAMPLES = examples(
    "bd merge gpu-run/grid.sqlite --into experiments/beyond/beyond.sqlite",
    "bd merge node1.sqlite node2.sqlite   (into the default results file)",
)


@maps_errors
def merge(
    sources: Annotated[list[Path], typer.Argument(help="results files to copy rows from (read only)")],
    into: Annotated[
        Path | None, typer.Option(help="results file that receives them [default: ~/.cache/bd/results.sqlite]")
    ] = None,
    format: OutputFormat = Format.table,
) -> None:
    """Merge results files: rows of a grid run elsewhere join this store.

    A finished row already here is kept (never overwritten); a failed one gives way to a finished one."""
    from bd_core.store import ResultStore

    path = into or default_store()
    summary: dict[str, dict[str, int]] = {}
    with ResultStore(path) as target:
        for source in sources:
            with ResultStore(source, readonly=True) as rows:
                summary[str(source)] = target.merge(rows)
        total = target.count()

    def show_table() -> None:
        for source, counts in summary.items():
            say(f"{source}: {counts['added']} rows added, {counts['kept']} already in {path}")
        say(f"{path} now holds {total} rows")

    emit({"into": str(path), "sources": summary, "rows": total}, format, show_table)
