"""Where a defense spends its time: `BD_PROFILE=DIR bd defend ...` runs the defense under
torch.profiler and writes DIR/<label>.txt (operators by their own time, the top 40),
DIR/<label>.json (every operator's own time and calls, the block's wall time and thread count:
what bench/profile_defenses.py sums into categories) and DIR/<label>.trace.json (a
Chrome/Perfetto trace). Without BD_PROFILE nothing is recorded and
nothing is slowed down. The evaluation before and after is not profiled: the defense's own
work is what the file explains."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bd_core.errors import InvalidRequest

ENV = "BD_PROFILE"


def profile_dir() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidRequest(f"{ENV}={value} is a file; give a folder for the profiles (it is created if missing)")
    return path


@contextmanager
def profiled(label: str) -> Iterator[Path | None]:
    """Profile the block when BD_PROFILE names a folder; yields the text file it will write."""
    folder = profile_dir()
    if folder is None:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", label)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    text = folder / f"{name}.txt"
    with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
        began = time.perf_counter()
        yield text
        wall = time.perf_counter() - began
    averages = prof.key_averages()
    operators = sorted(
        ({"name": row.key, "self_cpu_us": row.self_cpu_time_total, "calls": row.count} for row in averages),
        key=lambda row: -row["self_cpu_us"],
    )
    summary = {"label": label, "wall_seconds": wall, "threads": torch.get_num_threads(), "operators": operators}
    (folder / f"{name}.json").write_text(json.dumps(summary, indent=0))
    table = averages.table(sort_by="self_cpu_time_total", row_limit=40)
    text.write_text(f"{label}: operators by self CPU time\n\n{table}\n")
    prof.export_chrome_trace(str(folder / f"{name}.trace.json"))
