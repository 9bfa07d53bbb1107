"""Progress bars for long work, drawn on stderr so that stdout stays data.

Set BD_PROGRESS=0 to silence them (tests). When stderr is not a terminal (a log file, `nohup`, CI,
a batch scheduler, a grid worker's output) rich would draw each bar once, when it ends, so an
hour of work would leave nothing in the log: there each bar becomes a plain line every
BD_PROGRESS_EVERY seconds (default 60) and one when it finishes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

T = TypeVar("T")
_console = Console(stderr=True)
# what the work belongs to, in log lines (a grid interleaves its workers' lines in one log)
_label: ContextVar[str] = ContextVar("bd_progress_label", default="")


def enabled() -> bool:
    return os.environ.get("BD_PROGRESS", "1") != "0"


def log_interval() -> float:
    """Seconds between a bar's plain lines when stderr is not a terminal (BD_PROGRESS_EVERY)."""
    text = os.environ.get("BD_PROGRESS_EVERY", "60")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects nan
        raise ValueError(f"BD_PROGRESS_EVERY={text!r} is not a number of seconds >= 0; unset it for 60")
    return seconds


@contextmanager
def labelled(label: str) -> Iterator[None]:
    """Prefix the status and progress lines printed inside with `label` (e.g. the grid unit)."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def _clock(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=int(seconds)))  # h:mm:ss, as rich's bar shows it


class LoggedProgress(Progress):
    """rich's Progress for a stderr that is not a terminal: nothing is drawn; each bar prints a
    plain line when `every` seconds have passed since its last one, and one when it finishes."""

    def __init__(self, *columns: Any, every: float, **kwargs: Any) -> None:
        super().__init__(*columns, **{**kwargs, "disable": True})
        self.every = every
        self._last_line: dict[TaskID, float] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._last_line[task_id] = time.monotonic()
        return task_id

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._line_if_due(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line_if_due(task_id)

    def _line_if_due(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        last = self._last_line.get(task_id)
        if last is None:  # its finishing line is out
            return
        now = time.monotonic()
        if not task.finished and now - last < self.every:
            return
        self._last_line[task_id] = now
        if task.finished:
            del self._last_line[task_id]
        count = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        status = task.fields.get("status") or ""
        when = (
            f"done in {_clock(task.finished_time)}"
            if task.finished
            else f"{_clock(task.elapsed)} elapsed, {_clock(task.time_remaining)} left"
        )
        line = f"{task.description}: {count}{' ' + status if status else ''}"
        log(f"{escape(line)} ({when})")  # the unit's label comes from the context, as for any status line


def make_progress() -> Progress:
    """Counts, elapsed and remaining time keep their width; the description and the status text
    share what is left of the line (ellipsised), so 80 columns show every number. Off a
    terminal, a `LoggedProgress` prints plain lines instead."""
    if enabled() and not _console.is_terminal:
        return LoggedProgress(console=_console, every=log_interval())
    return Progress(
        TextColumn(
            "[bold]{task.description}", table_column=Column(ratio=3, no_wrap=True, overflow="ellipsis", min_width=12)
        ),
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
    """A status line on stderr (always shown: it says what bd is doing), prefixed with the unit
    inside `labelled` (a grid's workers interleave their lines in one log)."""
    label = _label.get()  # printed as written; `message` may hold rich markup
    _console.print(f"{escape(f'[{label}] ') if label else ''}{message}", highlight=False, soft_wrap=True)
