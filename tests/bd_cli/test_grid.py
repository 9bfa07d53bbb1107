"""Grids: a mini grid (2 attacks x 4 defenses x 2 SPC x 2 partitions) on the local process
pool and on a real local Ray instance, resumption after SIGKILL, failures recorded."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bd_cli.grid import GridSpec, bind_units, local_runner, run_grid
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
        report = run_grid(grid.units(), store, cache_dir, local_runner(2), threads=1)
        assert (report.total, report.ok, report.failed, report.attacks_trained) == (32, 32, 0, 2), report.failures
        again = run_grid(grid.units(), store, cache_dir, local_runner(2), threads=1)
        assert (again.skipped, again.ok, again.attacks_trained) == (32, 0, 0)
    rows = keys_in(tmp_path / "r.sqlite")
    assert len(rows) == 32 and all(status == "ok" for _, status in rows)


def _touch_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return path


def test_local_pool_cancels_units_not_started_when_its_consumer_stops(tmp_path):
    # the driver stops consuming (a row it cannot store, Ctrl-C): the units not yet handed to a
    # worker must not run, since nobody would store their results
    items = [str(tmp_path / f"unit{i}") for i in range(10)]
    results = local_runner(1)(_touch_after, items, 0.3)
    first = next(iter(results))
    results.close()
    ran = sorted(p.name for p in tmp_path.iterdir())
    assert Path(first).name in ran
    # one finished, one running, at most two handed to the pool's call queue: the rest cancelled
    assert len(ran) <= 4, ran
    assert "unit9" not in ran


def test_ray_backend_streams_the_same_units_into_the_store(grid_file, cache_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from bd_cli.grid import ray_runner

    grid = GridSpec.from_toml(grid_file)
    try:
        with ResultStore(tmp_path / "ray.sqlite") as store:
            seen = []
            report = run_grid(grid.units(), store, cache_dir, ray_runner(None), threads=1, on_result=seen.append)
        assert report.ok == 32 and len(seen) == 32
    finally:
        ray.shutdown()
    local = {u.key for u in bind_units(grid.units(), None)}  # keys carry the data's fingerprint
    assert {k for k, _ in keys_in(tmp_path / "ray.sqlite")} == local


def test_a_failing_unit_is_recorded_and_the_rest_complete(grid_file, cache_dir, tmp_path, monkeypatch):
    plugin = tmp_path / "exploding_defense.py"
    plugin.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bd_defenses import Defense, register

        @register("explode", family="test", paper="a defense that raises, for tests")
        @dataclass(frozen=True)
        class Explode(Defense):
            def __call__(self, model, data, ctx):
                raise RuntimeError("boom")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BD_PLUGINS", "exploding_defense")
    import importlib

    importlib.import_module("exploding_defense")
    grid_path = tmp_path / "g.toml"
    grid_path.write_text(MINI.format(defenses='["explode", "clp"]'))
    from bd_defenses import DEFENSES

    try:
        with ResultStore(tmp_path / "f.sqlite") as store:
            report = run_grid(GridSpec.from_toml(grid_path).units(), store, cache_dir, local_runner(2), threads=1)
            failed = store.query(status="failed")
    finally:
        DEFENSES.pop("explode", None)  # other tests iterate over the registry
    assert (report.ok, report.failed) == (8, 8)
    assert all(r["defense"] == "explode" and "RuntimeError: boom" in r["error"] for r in failed)


def test_killed_grid_resumes_without_duplicates(grid_file, cache_dir, tmp_path):
    store = tmp_path / "killed.sqlite"
    env = {**os.environ, "BD_PROGRESS": "0", "BD_CACHE": str(cache_dir.parent / "killed-cache")}
    cmd = [sys.executable, "-m", "bd_cli.app", "grid", "--config", str(grid_file), "--store", str(store),
           "--device", "cpu", "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if store.exists() and 3 <= len(keys_in(store)) < 32:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(keys_in(store))
    assert 3 <= partial < 32
    done = subprocess.run(cmd + ["--format", "json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = keys_in(store)
    assert len(rows) == 32 and len({k for k, _ in rows}) == 32 and all(s == "ok" for _, s in rows)
    assert f'"skipped": {partial}' in done.stdout
