"""A grid on a real two-node Ray cluster on this machine, with no shared disk: the worker node
has its own HOME, cache, data folder and temp dir, and never learns the driver's paths. The
driver is killed mid-grid, then the worker node; reruns complete the grid, every unit stored
exactly once and whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

RAY = str(Path(sys.executable).parent / "ray")
GRID = """
datasets = ["synthetic"]
archs = ["preact-resnet18"]
attacks = ["badnets"]
defenses = ["ft", "clp"]
spc = [2, 5, 10]
partitions = 3
preset = "cluster-test"
[presets.cluster-test]
epochs = 2
batch_size = 64
lr = 0.05
width = 0.125
train_limit = 600
[settings.ft]
epochs = 15
"""
UNITS = 18
# quick failure detection, and no token: the worker node has its own HOME, where a token would not be
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "4",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _env(root: Path, role: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BD_", "RAY_"))}
    return {**env, **RAY_ENV, "BD_PROGRESS": "0", "BD_CACHE": str(root / f"{role}-cache"), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _processes_of(root: Path, name: str | None = None) -> list[int]:
    """Pids whose environment points into `root` (the cluster's own processes), by name."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if name and (entry / "comm").read_text().strip() != name:
                continue
            if str(root).encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="bdr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    for d in ("head-tmp", "worker-tmp", "worker-home", "worker-data"):
        (root / d).mkdir()
    ip, port = ray.util.get_node_ip_address(), _free_port()
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats"]
    try:
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                "--port",
                str(port),
                "--temp-dir",
                str(root / "head-tmp"),
                "--include-dashboard",
                "false",
                *common,
            ],
            env=_env(root, "head"),
            check=True,
            capture_output=True,
            timeout=180,
        )
        worker_env = _env(
            root,
            "worker",
            HOME=str(root / "worker-home"),
            BD_DATA=str(root / "worker-data"),
            TMPDIR=str(root / "worker-tmp"),
        )
        subprocess.run(
            [RAY, "start", "--address", f"{ip}:{port}", "--temp-dir", str(root / "worker-tmp"), *common],
            env=worker_env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield root, f"{ip}:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=_env(root, "head"), capture_output=True, timeout=120)
        for pid in _processes_of(root):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _rows(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        return db.execute("SELECT key, status, acc_post, asr_post, details FROM results").fetchall()


def _driver(root: Path, address: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "bd_cli.app",
        "grid",
        "--config",
        str(root / "grid.toml"),
        "--backend",
        "ray",
        "--address",
        address,
        "--store",
        str(root / "driver" / "results.sqlite"),
        "--device",
        "cpu",
        "--format",
        "json",
    ]
    env = _env(root, "driver", HOME=str(root / "driver"))
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _report(out: str) -> dict:
    """The driver's JSON summary: its last JSON document (Ray may print a line about the lost node
    on the driver's stdout before it)."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def _wait_for_rows(store: Path, count: int, driver: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while len(_rows(store)) < count:
        assert driver.poll() is None, f"the grid ended before {count} rows: {driver.communicate()}"
        assert time.monotonic() < deadline, f"fewer than {count} rows after {timeout} s"
        time.sleep(0.2)


def test_grid_across_two_nodes_without_a_shared_disk_survives_losing_the_driver_and_a_node(cluster):
    root, address = cluster
    (root / "driver").mkdir()
    (root / "grid.toml").write_text(GRID)
    store = root / "driver" / "results.sqlite"

    first = _driver(root, address)  # killed (SIGKILL, no cleanup) once a few rows are in
    _wait_for_rows(store, 2, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    after_driver = len(_rows(store))
    assert 2 <= after_driver < UNITS

    second = _driver(root, address)  # resumes; the worker node is lost under it
    _wait_for_rows(store, after_driver + 2, second)
    raylets = _processes_of(root / "worker-cache", "raylet")
    assert len(raylets) == 1, "the worker node's raylet was not found"
    os.kill(raylets[0], signal.SIGKILL)
    out, err = second.communicate(timeout=600)
    assert second.returncode in (0, 1), err[-3000:]  # 1: some units were reported lost (not stored)
    report = _report(out)
    assert report["failed"] == 0, report["failures"]

    third = _driver(root, address)  # completes whatever the lost node took with it
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]
    report = _report(out)
    assert report["skipped"] + report["ok"] == UNITS and report["lost"] == 0

    rows = _rows(store)
    assert len(rows) == len({key for key, *_ in rows}) == UNITS  # every unit once
    assert all(status == "ok" and acc is not None and asr is not None for _, status, acc, asr, _ in rows)
    caches = {json.loads(details)["worker"]["cache"] for *_, details in rows}
    node_caches = {str(root / "head-cache" / "models"), str(root / "worker-cache" / "models")}
    assert caches <= node_caches, f"a worker used a cache that is not its node's own: {caches - node_caches}"
    assert str(root / "worker-cache" / "models") in caches, "no unit ran on the worker node"
    keys = {json.loads(details)["attacked_model"] for *_, details in rows}
    assert len(keys) == 1
    key = keys.pop()
    # the model reached the worker node through Ray, and the driver kept the trained bytes
    assert (root / "worker-cache" / "models" / key / "model.safetensors").is_file()
    assert (root / "driver-cache" / "models" / key / "model.safetensors").is_file()
    assert not (root / "driver-cache" / "trials").exists()  # no worker wrote into the driver's cache
