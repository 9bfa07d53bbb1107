"""Grids: a mini grid (2 attacks x 4 defenses x 2 SPC x 2 partitions) on the local process
pool and on a real local Ray instance, resumption after SIGTERM and SIGKILL, failures recorded."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from bd_cli.runner import GridSpec, LocalPool, bind_units, run_grid
from bd_core.store import ResultStore

MINI = """
datasets = ["synthetic"]
archs = ["preact-resnet18"]
attacks = ["badnets", "blended"]
defenses = {defenses}
spc = [2, 5]
partitions = 2
preset = "grid-test"
[presets.grid-test]
epochs = 3
batch_size = 64
lr = 0.05
width = 0.125
train_limit = 600
[settings.ft]
epochs = 1
[settings.fp]
epochs = 1
"""
FOUR = '["clp", "bnp", "ft", "fp"]'


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "mini.toml"
    path.write_text(MINI.format(defenses=FOUR))
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("grid-models")


def keys_in(store: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT key, status FROM results").fetchall()


def test_grid_file_expands_to_stable_validated_units(grid_file):
    grid = GridSpec.from_toml(grid_file)
    units = grid.units()
    assert len(units) == 2 * 4 * 2 * 2 and len({u.key for u in units}) == 32
    assert [u.key for u in GridSpec.from_toml(grid_file).units()] == [u.key for u in units]
    assert len({u.attack.key for u in units}) == 2  # trained once each, shared by 16 units
    assert GridSpec.build(defenses="all").defense_names()[:2] == ["anp", "awm"]
    assert "unit" not in GridSpec.build(defenses="all").defense_names()  # reviewed, not benchmarked


def test_bad_grid_file_names_the_valid_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('attackz = ["badnets"]\n')
    with pytest.raises(Exception, match="unknown keys in .*attackz.*valid: datasets"):
        GridSpec.from_toml(bad)


def test_local_backend_runs_every_unit_once_and_resumes(grid_file, cache_dir, tmp_path):
    grid = GridSpec.from_toml(grid_file)
    with ResultStore(tmp_path / "r.sqlite") as store:
        report = run_grid(grid.units(), store, cache_dir, LocalPool(2), threads=1)
        assert (report.total, report.ok, report.failed, report.attacks_trained) == (32, 32, 0, 2), report.failures
        again = run_grid(grid.units(), store, cache_dir, LocalPool(2), threads=1)
        assert (again.skipped, again.ok, again.attacks_trained) == (32, 0, 0)
    rows = keys_in(tmp_path / "r.sqlite")
    assert len(rows) == 32 and all(status == "ok" for _, status in rows)


def _touch_after(item: tuple[str, float], setup: object) -> str:
    path, seconds = item
    time.sleep(seconds)
    Path(path).touch()
    return path


def test_local_pool_stops_its_units_when_its_consumer_stops(tmp_path):
    # the driver stops consuming (a row it cannot store, Ctrl-C, SIGTERM): the units not yet handed
    # to a worker must not run and the running one must stop, since nobody would store their results
    items = [(str(tmp_path / f"unit{i}"), 0.3 if i == 0 else 600.0) for i in range(10)]
    results = LocalPool(1)(_touch_after, items, None)
    _, first = next(iter(results))
    closing = threading.Thread(target=results.close)
    closing.start()
    closing.join(timeout=120)  # waiting for the running unit instead would take 600 s
    assert not closing.is_alive(), "the pool waited for a unit whose result nobody would store"
    assert Path(first).name == "unit0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit0"]


def test_ray_backend_streams_the_same_units_into_the_store(grid_file, cache_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from bd_cli.runner import RayCluster

    grid = GridSpec.from_toml(grid_file)
    try:
        with ResultStore(tmp_path / "ray.sqlite") as store:
            seen = []
            report = run_grid(grid.units(), store, cache_dir, RayCluster(None), threads=1, on_result=seen.append)
        assert report.ok == 32 and len(seen) == 32
    finally:
        ray.shutdown()
    local = {u.key for u in bind_units(grid.units(), None)}  # keys carry the data's fingerprint
    assert {k for k, _ in keys_in(tmp_path / "ray.sqlite")} == local


def test_a_failing_unit_is_recorded_and_the_rest_complete(grid_file, cache_dir, tmp_path, monkeypatch):
    plugin = tmp_path / "exploding_defense.py"
    plugin.write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        from bd_defenses import Defense, register

        @register("explode", family="test", paper="a defense that raises, for tests")
        @dataclass(frozen=True)
        class Explode(Defense):
            def __call__(self, model, data, ctx):
                raise RuntimeError("boom")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BD_PLUGINS", "exploding_defense")
    import importlib

    importlib.import_module("exploding_defense")
    grid_path = tmp_path / "g.toml"
    grid_path.write_text(MINI.format(defenses='["explode", "clp"]'))
    from bd_defenses import DEFENSES

    try:
        with ResultStore(tmp_path / "f.sqlite") as store:
            report = run_grid(GridSpec.from_toml(grid_path).units(), store, cache_dir, LocalPool(2), threads=1)
            failed = store.query(status="failed")
    finally:
        DEFENSES.pop("explode", None)  # other tests iterate over the registry
    assert (report.ok, report.failed) == (8, 8)
    assert all(r["defense"] == "explode" and "RuntimeError: boom" in r["error"] for r in failed)


def _wait_for_rows(store: Path, at_least: int) -> int:
    deadline = time.time() + 300
    while time.time() < deadline:
        if store.exists() and at_least <= len(keys_in(store)) < 32:
            break
        time.sleep(0.5)
    return len(keys_in(store))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stopped_or_killed_grid_resumes_without_duplicates(grid_file, cache_dir, tmp_path):
    store = tmp_path / "killed.sqlite"
    env = {**os.environ, "BD_PROGRESS": "0", "BD_CACHE": str(cache_dir.parent / "killed-cache")}
    cmd = [
        sys.executable,
        "-m",
        "bd_cli.app",
        "grid",
        "--config",
        str(grid_file),
        "--store",
        str(store),
        "--device",
        "cpu",
        "--workers",
        "2",
    ]
    # SIGTERM to the driver alone (`kill`, a scheduler): it stops its own workers, keeps the rows
    # stored so far and says so; nothing of the grid outlives it
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    stopped_at = _wait_for_rows(store, 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    partial = len(keys_in(store))
    assert 3 <= stopped_at <= partial < 32
    said = re.search(r"stopped: (\d+) results stored by this run", stderr)
    assert said and int(said.group(1)) in (partial, partial - 1), stderr[-2000:]  # -1: a signal between put and count
    deadline = time.time() + 30
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "a pool worker outlived the stopped grid"
    # SIGKILL to the whole group: no chance to clean up, the store still holds whole rows only
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_rows(store, partial + 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(keys_in(store))
    assert partial < 32
    done = subprocess.run(cmd + ["--format", "json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = keys_in(store)
    assert len(rows) == 32 and len({k for k, _ in rows}) == 32 and all(s == "ok" for _, s in rows)
    assert f'"skipped": {partial}' in done.stdout


def test_a_unit_out_of_gpu_memory_is_retried_alone_not_stored_as_failed(grid_file, cache_dir, tmp_path, monkeypatch):
    # the first attempt of every unit runs out of memory (as beside other units on one GPU); the
    # retry, with the device to itself, succeeds: stored as ok, never as failed
    plugin = tmp_path / "oom_once_defense.py"
    plugin.write_text(
        textwrap.dedent(f"""
        from dataclasses import dataclass
        from pathlib import Path
        import torch
        from bd_defenses import Defense, register

        @register("oom-once", family="test", paper="runs out of memory at its first attempt, for tests")
        @dataclass(frozen=True)
        class OomOnce(Defense):
            def __call__(self, model, data, ctx):
                weights = float(sum(p.double().sum() for p in model.parameters()))
                marker = Path({str(tmp_path)!r}) / f"tried-{{weights:.6f}}-{{len(data.clean)}}-{{ctx.seed}}"
                if not marker.exists():
                    marker.touch()
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return model
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BD_PLUGINS", "oom_once_defense")
    import importlib

    importlib.import_module("oom_once_defense")
    grid_path = tmp_path / "g.toml"
    grid_path.write_text(MINI.format(defenses='["oom-once"]'))
    from bd_defenses import DEFENSES

    try:
        with ResultStore(tmp_path / "oom.sqlite") as store:
            report = run_grid(GridSpec.from_toml(grid_path).units(), store, cache_dir, LocalPool(2), threads=1)
            rows = store.query()
    finally:
        DEFENSES.pop("oom-once", None)
    assert (report.ok, report.failed, report.retried_alone) == (8, 0, 8)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert len(list(tmp_path.glob("tried-*"))) == 8  # each unit's first attempt did run out of memory
