"""Progress bars for long work, drawn on stderr so that stdout stays data.

Set BD_PROGRESS=0 to silence them (tests, logs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

T = TypeVar("T")
_console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("BD_PROGRESS", "1") != "0"


def make_progress() -> Progress:
    """Counts, elapsed and remaining time keep their width; the description and the status text
    share what is left of the line (ellipsised), so 80 columns show every number."""
    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(ratio=3, no_wrap=True, overflow="ellipsis",
                                                                   min_width=12)),
        BarColumn(bar_width=12),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[status]}", table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis")),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TimeRemainingColumn(compact=True, table_column=Column(no_wrap=True)),
        console=_console,
        disable=not enabled(),
        transient=False,
        expand=True,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (no-op display when disabled)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)


class Steps:
    """One progress bar for a known number of steps: `with Steps("NC", total) as tick: tick(n, status)`."""

    def __init__(self, description: str, total: int) -> None:
        self.description, self.total = description, total

    def __enter__(self):
        self._progress = make_progress().__enter__()
        self._task = self._progress.add_task(self.description, total=self.total, status="")
        return self.advance

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        self._progress.update(self._task, advance=steps, **({"status": status} if status is not None else {}))

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)


def log(message: str) -> None:
    """A status line on stderr (always shown: it says what bd is doing)."""
    _console.print(message, highlight=False, soft_wrap=True)
