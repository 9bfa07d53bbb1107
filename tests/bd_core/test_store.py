"""The SQLite results file: unique keys, atomic rows, survival of a killed writer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from bd_core.store import ResultStore, StoreError

METRICS = ("acc_pre", "asr_pre", "ra_pre", "acc_post", "asr_post", "ra_post", "arr", "rdr")


def row(key: str, status: str = "ok", **extra):
    base = {"key": key, "status": status, "dataset": "synthetic", "defense": "ft", "spc": 10, "partition": 0}
    if status == "ok":
        base.update({m: 0.5 for m in METRICS})
    return {**base, **extra}


def test_put_get_and_unique_key(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.put(row("a", details={"pruned": [1, 2]}))
        assert not store.put(row("a", acc_post=0.1))  # finished keys are never overwritten
        got = store.get("a")
        assert got["acc_post"] == 0.5 and got["details"] == {"pruned": [1, 2]}
        assert store.has("a") and not store.has("b") and store.count() == 1


def test_failed_unit_is_recorded_then_replaced_by_success(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(row("k", status="failed", error="RuntimeError: boom"))
        assert not store.has("k") and store.get("k")["error"].startswith("RuntimeError")
        assert store.put(row("k"))
        assert store.has("k") and store.count() == 1 and store.get("k")["status"] == "ok"


def test_merge_adds_new_rows_keeps_finished_ones_and_replaces_failures(tmp_path):
    with ResultStore(tmp_path / "here.sqlite") as here, ResultStore(tmp_path / "gpu.sqlite") as gpu:
        here.put(row("done", acc_post=0.9))
        here.put(row("broke", status="failed", error="OSError"))
        gpu.put(row("done", acc_post=0.1, created_at="2026-01-01T00:00:00"))
        gpu.put(row("broke", details={"device": "cuda: H200"}))
        gpu.put(row("new", details={"device": "cuda: H200"}))
        assert here.merge(gpu) == {"added": 2, "kept": 1}
        assert here.get("done")["acc_post"] == 0.9  # a finished row is never overwritten
        assert here.get("broke")["status"] == "ok" and here.get("new")["details"] == {"device": "cuda: H200"}
        assert here.merge(gpu) == {"added": 0, "kept": 3} and here.count() == 3  # merging again changes nothing
        with pytest.raises(StoreError, match="into itself"):
            here.merge(here)


def test_query_filters_and_rejects_unknown_columns(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(row("a", spc=2))
        store.put(row("b", spc=10))
        assert [r["key"] for r in store.query(spc=2)] == ["a"]
        with pytest.raises(ValueError, match="unknown result columns"):
            store.query(colour="red")


WRITER = textwrap.dedent(
    """
    import sys
    from bd_core.store import ResultStore, StoreError
    metrics = {m: 0.25 for m in %r}
    store = ResultStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        key = f"unit-{i:05d}"
        if store.has(key):
            continue
        # a large JSON field makes each transaction long enough to be killed inside one
        store.put({"key": key, "status": "ok", **metrics, "details": {"blob": "x" * 200000, "i": i}})
        print(i, flush=True)
    """
) % (METRICS,)


def test_store_survives_writer_killed_mid_run(tmp_path):
    path = tmp_path / "r.sqlite"
    total = 400
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(total)], stdout=subprocess.PIPE, text=True)
    written = 0
    deadline = time.time() + 60
    while written < 30 and time.time() < deadline:
        if proc.stdout.readline():
            written += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert written >= 30

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute(f"SELECT key, status, {', '.join(METRICS)}, details FROM results").fetchall()
    db.close()
    assert 30 <= len(rows) < total  # killed before the end
    for r in rows:  # every row is whole: no partial result
        assert r[1] == "ok" and all(v == 0.25 for v in r[2:-1]) and len(r[-1]) > 200000

    # a rerun skips what is done and finishes the rest, never duplicating a key
    subprocess.run([sys.executable, "-c", WRITER, str(path), str(total)], check=True, stdout=subprocess.DEVNULL)
    with ResultStore(path) as store:
        keys = [r["key"] for r in store.query()]
    assert sorted(keys) == [f"unit-{i:05d}" for i in range(total)]
