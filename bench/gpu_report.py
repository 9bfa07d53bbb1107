"""bench/RESULTS-gpu.md from the outputs of bench/gpu.sh (called by it).

Usage: python bench/gpu_report.py <gpu.sh output folder> bench/RESULTS-gpu.md
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

TARGET_SHARE = 0.70  # apply_trigger and channel_stats: at least 70 % of the device's copy bandwidth
TARGET_TRAINING = 50_000  # images/s, PreAct-ResNet18 on 32 px, on an H100/H200 class GPU


def kernel_rows(kernels: dict) -> tuple[list[str], float | None]:
    rows, copy = [], None
    for b in kernels.get("benchmarks", []):
        extra = b.get("extra_info", {})
        copy = extra.get("copy GB/s", copy)
        median = b["stats"]["median"]
        rate = extra.get("GB/s")
        rows.append((b["group"], b["name"], median, rate))
    lines = []
    for group, name, median, rate in sorted(rows):
        share = f"{rate / copy:.0%}" if rate and copy else "–"
        lines.append(f"| {group} | {name} | {median * 1e3:.3f} | {rate if rate else '–'} | {share} |")
    return lines, copy


def last_line(path: Path, containing: str) -> str | None:
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").splitlines()
    hits = [line.strip() for line in lines if containing in line and line.strip()]
    return hits[-1] if hits else None


def test_summary(path: Path) -> str:
    """The pytest summaries in gpu.sh's test log, and the test a crash happened in, if one did."""
    if not path.exists():
        return "–"
    text = path.read_text(errors="replace")
    parts = re.findall(r"^=*\s*(\d+ (?:passed|failed)[^=\n]*?)\s*=*$", text, re.M)
    crash = re.search(r"Fatal Python error: ([\w ]+)", text)
    if crash:
        where = re.search(r'tests/\S+", line \d+ in (\w+)', text)
        parts.append(f"a test process crashed ({crash.group(1)}{' in ' + where.group(1) if where else ''})")
    return "; ".join(parts) or "–"


def exception_check(path: Path) -> str:
    """What bench/gpu_exception_check.py found: do errors thrown in the extension reach Python?"""
    if not path.exists():
        return "not run"
    text = path.read_text(errors="replace")
    ok = "errors from the extension reach Python"

    def last_step(log: str) -> str:  # the check prints each step before it runs it
        steps = re.findall(r"^raising the .+$", log, re.M)
        return f" (last step: {steps[-1]})" if steps else ""

    return "errors reach Python" if ok in text else "did not finish" + last_step(text)


def main(folder: str, target: str) -> None:
    out = Path(folder)
    bench = json.loads((out / "gpu_bench.json").read_text())
    kernels = json.loads((out / "kernels.json").read_text()) if (out / "kernels.json").exists() else {}
    rows, copy = kernel_rows(kernels)
    tests = test_summary(out / "cuda-tests.txt")
    build = (out / "build-time.txt").read_text().strip().splitlines()[0] if (out / "build-time.txt").exists() else "–"
    raised = exception_check(out / "cuda-tests.txt")
    memcheck = ", ".join(
        line.strip("= ")
        for line in (last_line(out / "memcheck.txt", "passed"), last_line(out / "memcheck.txt", "ERROR SUMMARY"))
        if line
    )
    lines = [
        "# GPU results",
        "",
        f"Measured by `bash bench/gpu.sh` on **{bench['device']}**, torch {bench['torch']}, "
        f"{time.strftime('%Y-%m-%d')}. Extension {build}; errors thrown in it: {raised}; "
        f"tests/bd_kernels: {tests}; the CUDA tests under "
        f"compute-sanitizer memcheck: {memcheck or '–'}.",
        "",
        f"## Kernels (device copy bandwidth measured in the same run: {copy} GB/s; target for the "
        f"memory-bound ops: {TARGET_SHARE:.0%} of it)",
        "",
        "| group | benchmark | median ms | GB/s | share of copy |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"## Training throughput (PreAct-ResNet18, 32 px, bf16 autocast, channels_last; target "
        f"{TARGET_TRAINING:,} images/s)",
        "",
        "| batch | images/s | bd pipeline alone, images/s | pipeline time / step time |",
        "|---|---|---|---|",
        *[
            f"| {t['batch']} | {t['images_per_s']:,} | {t['pipeline_images_per_s']:,} | {t['pipeline_share']:.1%} |"
            for t in bench["training"]
        ],
        "",
        "## One defense per family (synthetic 32 px data, paper preset, SPC 10)",
        "",
        "| family | defense | defense s | ACC | ASR | RA |",
        "|---|---|---|---|---|---|",
    ]
    for family, row in bench.get("defenses", {}).items():
        if "error" in row:
            lines.append(f"| {family} | – | – | {' '.join(row['error'])} | | |")
        elif family == "attack":
            lines.append(
                f"| attack (training {row['train_seconds']:.1f} s) | – | – | {row['acc']:.1%} | "
                f"{row['asr']:.1%} | {row['ra']:.1%} |"
            )
        else:
            lines.append(
                f"| {family} | {row['defense']} | {row['defense_seconds']:.1f} | {row['acc_post']:.1%} | "
                f"{row['asr_post']:.1%} | {row['ra_post']:.1%} |"
            )
    Path(target).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
