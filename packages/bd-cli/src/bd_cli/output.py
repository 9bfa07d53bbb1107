"""How every command speaks: one console for results, one for diagnostics, JSON for programs,
and one mapping from bd's errors to exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"


def emit(data: object, format: Format, show_table: Callable[[], None]) -> None:
    """The one output path of every command: JSON for programs, else the command's table."""
    if format is Format.json:
        out.print_json(json.dumps(data, default=str))
    else:
        show_table()


def say(text: str) -> None:
    out.print(text, soft_wrap=True, highlight=False)


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {text}", soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def maps_errors(command: Callable) -> Callable:
    """A command's errors as exit codes: a request bd cannot serve (BdError) is one line and
    exit 2; a unit that ran and failed (stored as failed) is one line and exit 1."""

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from bd_core.errors import BdError

        from bd_cli.runner.experiment import UnitFailed

        try:
            return command(*args, **kwargs)
        except BdError as e:
            fail(str(e))
        except UnitFailed as e:
            fail(str(e), code=1)

    return wrapped


@contextmanager
def stdout_to_stderr(cleanup: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Send everything written to file descriptor 1 to stderr until `cleanup` has run: Ray's
    driver prints its own lines (a lost node, a raylet's log) on stdout, where --format json
    must leave nothing but bd's document."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        try:
            cleanup()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def key_value_table(info: dict[str, Any]) -> Table:
    table = Table(show_header=False)
    for key, value in info.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    return table


def progress_line(message: str):
    """A status line for work without steps to count (rich's spinner; silent with BD_PROGRESS=0)."""
    from bd_core.progress import enabled

    return err.status(message) if enabled() else nullcontext()
