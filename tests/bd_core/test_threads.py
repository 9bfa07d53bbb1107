"""CPU threads per bd process: a number the user fixes wins; otherwise every live bd process
(a `bd run`, each worker of each grid) takes an equal share of the cores, and a grid's driver,
which only waits, does not count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from bd_core import threads


@pytest.fixture
def running(tmp_path, monkeypatch):
    """A fresh registry of live bd processes on a machine of 4 cores, nothing fixed by the user."""
    monkeypatch.setenv("BD_CACHE", str(tmp_path))
    monkeypatch.delenv("BD_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(threads, "_registered", None)
    before = torch.get_num_threads()
    folder = tmp_path / "running"
    folder.mkdir()
    yield folder
    threads.withdraw()
    torch.set_num_threads(before)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_fixed_number_wins_bd_threads_first(monkeypatch):
    monkeypatch.delenv("BD_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.fixed_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.fixed_threads() == 2
    monkeypatch.setenv("BD_THREADS", "3")
    assert threads.fixed_threads() == 3
    monkeypatch.setenv("BD_THREADS", "many")  # not a number: the next source decides
    assert threads.fixed_threads() == 2


def test_live_processes_share_the_cores_and_dead_ones_are_forgotten(running):
    (running / str(os.getppid())).touch()  # another live bd process (pytest's parent)
    (running / str(dead_pid())).touch()  # one that ended without unregistering
    assert threads.share_cores() == 2 and torch.get_num_threads() == 2  # 4 cores, 2 live processes
    assert sorted(p.name for p in running.iterdir()) == sorted([str(os.getppid()), str(os.getpid())])
    threads.withdraw()  # e.g. a grid's driver once its workers run
    assert [p.name for p in running.iterdir()] == [str(os.getppid())]


def test_grid_workers_share_unless_the_user_fixed_the_threads(running, monkeypatch):
    from bd_cli.runner.backends import choose_runner
    from bd_cli.runner.worker import WorkerSetup, _prepare

    assert choose_runner("local", None, 2, "cpu")[1] == 0  # 0: each worker takes its share
    _prepare(WorkerSetup("", None, "cpu", {}, threads=0))
    assert (running / str(os.getpid())).exists() and torch.get_num_threads() == 4  # the only live process
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_runner("local", None, 2, "cpu")[1] == 1
    assert choose_runner("ray", None, 0, "cpu")[1] == 1
