"""Progress off a terminal (a log file, nohup, CI, a grid worker): plain lines, not one bar at the end."""

from __future__ import annotations

import io
import re

import pytest
from bd_core import progress
from bd_core.progress import LoggedProgress, Steps, labelled, log_interval, track
from rich.console import Console


@pytest.fixture
def console(monkeypatch):
    """bd's stderr console replaced by one writing to a buffer, shown or not as a terminal."""
    monkeypatch.setenv("BD_PROGRESS", "1")

    def make(terminal: bool) -> io.StringIO:
        buffer = io.StringIO()
        monkeypatch.setattr(progress, "_console", Console(file=buffer, force_terminal=terminal, width=100))
        return buffer

    return make


def test_off_a_terminal_each_bar_prints_plain_lines_with_its_unit(console, monkeypatch):
    out = console(terminal=False)
    monkeypatch.setenv("BD_PROGRESS_EVERY", "0")
    with labelled("badnets on vgg19, sau, spc 100, partition 1"), Steps("SAU [rounds]", 3) as tick:
        for i in range(3):
            tick(1, f"round {i + 1}")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[badnets on vgg19, sau, spc 100, partition 1] SAU [rounds]: 1/3 round 1 (")
    assert "elapsed" in lines[0] and lines[-1].endswith(")") and "3/3 round 3 (done in " in lines[-1]
    assert len(lines) == 3 and "\x1b" not in out.getvalue()  # no bar, no escape codes in a log


def test_between_lines_a_bar_waits_its_interval_but_always_says_when_it_finishes(console, monkeypatch):
    out = console(terminal=False)
    monkeypatch.setenv("BD_PROGRESS_EVERY", "3600")
    for _ in track(range(50), "evaluating"):
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluating: 50/50 (done in 0:00:0")


def test_the_label_ends_with_its_block(console, monkeypatch):
    out = console(terminal=False)
    monkeypatch.setenv("BD_PROGRESS_EVERY", "0")
    with labelled("unit a"):
        pass
    with Steps("after", 1) as tick:
        tick()
    assert out.getvalue().startswith("after: 1/1")


@pytest.mark.parametrize("terminal", [False, True])
def test_status_lines_name_their_unit_and_keep_their_markup(console, terminal):
    out = console(terminal=terminal)
    with labelled("blended on vit, sau/tuned, spc 100, partition 0"):
        progress.log("tuning sau: candidate 1 (trigger_norm=0.1): check accuracy 0.8650, kept")
        progress.log("[yellow]warning:[/yellow] few images")
    progress.log("after the unit")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # a terminal colours the warning; the words are read
    assert text.splitlines() == [
        "[blended on vit, sau/tuned, spc 100, partition 0] tuning sau: candidate 1 (trigger_norm=0.1): check "
        "accuracy 0.8650, kept",
        "[blended on vit, sau/tuned, spc 100, partition 0] warning: few images",
        "after the unit",
    ]


def test_on_a_terminal_rich_draws_the_bar(console):
    out = console(terminal=True)
    assert not isinstance(progress.make_progress(), LoggedProgress)
    with Steps("drawn", 2) as tick:
        tick(2)
    assert "done in" not in out.getvalue() and "2/2" in out.getvalue()


def test_silenced_progress_prints_nothing(console, monkeypatch):
    out = console(terminal=False)
    monkeypatch.setenv("BD_PROGRESS", "0")
    with Steps("quiet", 2) as tick:
        tick(2)
    assert out.getvalue() == ""


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_interval_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("BD_PROGRESS_EVERY", value)
    with pytest.raises(ValueError, match="BD_PROGRESS_EVERY"):
        log_interval()
