"""CPU threads per bd process, shared fairly between the bd processes of one machine.

Each torch process defaults to one OpenMP thread per core; four `bd run`s side by side then
run sixteen threads on four cores and slow each other down many times over. A bd process
registers itself in a folder of live processes ($BD_CACHE/running/<pid>), takes
cores // live processes threads, and looks again between epochs (`rebalance`), so the share
follows processes as they start and end. $BD_THREADS, or OMP_NUM_THREADS set by the user,
fixes the number instead. `bd grid`'s pool workers share the same way (each registers), and
the grid's own process, which only waits for them, withdraws (`withdraw`).
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

import torch

from bd_core.paths import cache_root

_registered: Path | None = None
_last_check = 0.0
RECHECK_SECONDS = 5.0


def fixed_threads() -> int | None:
    """The number the user asked for ($BD_THREADS, else OMP_NUM_THREADS), if any."""
    for name in ("BD_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                continue
    return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def live_processes(folder: Path) -> int:
    """bd processes registered in `folder` that still run (stale entries are removed)."""
    count = 0
    for entry in folder.glob("*"):
        try:
            pid = int(entry.name)
        except ValueError:
            continue
        if _alive(pid):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(1, count)


def share_cores() -> int:
    """Register this process and set torch's threads to its share; returns the number set."""
    global _registered
    fixed = fixed_threads()
    if fixed is not None:
        torch.set_num_threads(fixed)
        return fixed
    folder = cache_root() / "running"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if _registered is None:
            _registered = folder / str(os.getpid())
            _registered.touch()
            atexit.register(_registered.unlink, missing_ok=True)
        share = max(1, cores() // live_processes(folder))
    except OSError:  # a read-only cache: fall back to torch's default
        return torch.get_num_threads()
    if share != torch.get_num_threads():
        torch.set_num_threads(share)
    return share


def withdraw() -> None:
    """Stop counting this process in the share (a grid's driver while its workers compute)."""
    global _registered
    if _registered is not None:
        _registered.unlink(missing_ok=True)
        _registered = None


def rebalance() -> None:
    """Between epochs: take this process's share again if other bd processes came or went."""
    global _last_check
    if _registered is None or time.monotonic() - _last_check < RECHECK_SECONDS:
        return
    _last_check = time.monotonic()
    share_cores()
