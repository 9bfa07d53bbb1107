"""Print each benchmark group's throughput and its ratio to the group's baseline.

Usage: python bench/report.py bench/last.json
A group's baseline is every benchmark whose name contains 'baseline'; ratios are
(fastest baseline) / (candidate) for the median and for the minimum, all from the
same run. On a shared 2-core VM timings are bimodal (a delayed second thread adds
about 1 ms to a parallel region), so the minimum is the steadier estimate of the
work itself; both are printed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} cpus")
    for group, items in groups.items():
        baselines = [b for b in items if "baseline" in b["name"]]
        base = min((b["stats"]["median"] for b in baselines), default=None)
        base_min = min((b["stats"]["min"] for b in baselines), default=None)
        print(f"\n[{group}]")
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            median, fastest = b["stats"]["median"], b["stats"]["min"]
            extra = b.get("extra_info", {})
            ratio = (
                f"  x{base / median:.1f} (median) x{base_min / fastest:.1f} (min) vs fastest baseline"
                if base and "baseline" not in b["name"]
                else ""
            )
            info = "  " + ", ".join(f"{k}={v}" for k, v in extra.items()) if extra else ""
            print(f"  {b['name']:<45} median {median * 1e3:8.2f} ms  min {fastest * 1e3:8.2f} ms{ratio}{info}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/last.json")
