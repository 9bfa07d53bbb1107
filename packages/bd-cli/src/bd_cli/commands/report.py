"""`bd report`: the survey's figures and summary tables from stored results (read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bd_cli.options import ResultsFile, default_store, examples
from bd_cli.output import fail, maps_errors, progress_line, say

EXAMPLES = examples(
    "bd report --out report/",
    "bd report --where dataset=cifar10 --where spc=2,10 --no-pdf",
    "bd report --pool   (one set of figures over all datasets)",
)


@maps_errors
def report(
    output: Annotated[
        Path,
        typer.Option(
            "--out", help="folder for figures (PNG, PDF), results.csv/.parquet and summary tables (.md, .csv, .tex)"
        ),
    ] = Path("bd-report"),
    store: ResultsFile = None,
    where: Annotated[list[str] | None, typer.Option(help="filter column=value[,value] (repeatable)")] = None,
    pdf: Annotated[bool, typer.Option(help="also write PDF figures")] = True,
    pool: Annotated[
        bool, typer.Option(help="draw each figure over all datasets together instead of one per dataset")
    ] = False,
) -> None:
    """Draw the survey's figures (3-10) and write summary tables from stored results (read-only)."""
    from bd_core.progress import log
    from bd_core.store import ResultStore

    from bd_cli.report import draw_figures, mixed_trainings, parse_filters, select, write_tables

    path = store or default_store()
    try:
        filters = parse_filters(where)
    except ValueError as e:
        fail(str(e))
    with ResultStore(path, readonly=True) as results:
        frame = select(results.to_frame(status=None), filters)
    ok, failed = frame[frame.status == "ok"], frame[frame.status != "ok"]
    if ok.empty:
        fail(f"no successful results in {path} match {where or 'the store'}")
    mixed = sorted(d for d, n in ok.groupby("defense").precision.nunique().items() if n > 1)
    if mixed:  # one box per defense must not pool fp32 and bf16 runs
        fail(
            f"{', '.join(mixed)} ran in more than one precision in {path}; keep one with --where precision=fp32 "
            "(or precision=bf16)"
        )
    for line in mixed_trainings(ok):
        log(f"[yellow]warning:[/yellow] {line}")
    with progress_line(f"drawing figures of {len(ok)} results"):
        written = write_tables(ok, failed, output) + draw_figures(ok, output, pdf, pool)
    say(
        f"{len(ok)} results ({ok.defense.nunique()} defenses, {ok.dataset.nunique()} datasets) -> "
        f"{len(written)} files in {output}/"
    )
    say((output / "summary.md").read_text())
