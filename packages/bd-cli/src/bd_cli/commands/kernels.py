"""`bd kernels`: the compiled bd_kernels extension: what is built, how fast it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from bd_cli.options import OutputFormat, examples
from bd_cli.output import Format, emit, fail, key_value_table, out

INFO_EXAMPLES = examples("bd kernels info --format json")
BENCH_EXAMPLES = examples("bd kernels bench --filter channel_stats")


def info(format: OutputFormat = Format.table) -> None:
    """Torch version, whether the extension loaded, CPU/CUDA kernels and the CUDA archs built."""
    import bd_kernels
    import torch

    build = bd_kernels.build_info()
    facts = {
        "torch": torch.__version__,
        "extension_loaded": bd_kernels.has_extension(),
        "built_with_torch": build.get("built_with_torch", ""),
        "cpu_kernels": bd_kernels.has_extension(),
        "cuda_kernels": bool(build.get("cuda")),
        "cuda_archs": build.get("cuda_archs", ""),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "ops": ["apply_trigger", "channel_stats", "masked_conv2d"],
    }
    if not facts["extension_loaded"]:
        facts["fallback"] = "pure-torch reference (pip install --no-build-isolation packages/bd-kernels to build)"
    emit(facts, format, lambda: out.print(key_value_table(facts)))


def bench(
    filter: Annotated[str | None, typer.Option(help="only benchmarks whose name matches (pytest -k)")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="where pytest-benchmark writes its JSON")] = Path(
        "bd-kernels-bench.json"
    ),
) -> None:
    """Run bench/test_kernels.py (pytest-benchmark) from a source checkout and print the ratios."""
    root = Path(__file__).resolve().parents[5]
    suite = root / "bench" / "test_kernels.py"
    if not suite.exists():
        fail("bd kernels bench needs a source checkout of bd (bench/test_kernels.py not found)")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        str(suite),
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--benchmark-only",
        f"--benchmark-json={json_out}",
    ] + (["-k", filter] if filter else [])
    code = subprocess.call(cmd, cwd=root)
    if code == 0:
        subprocess.call([sys.executable, str(root / "bench" / "report.py"), str(json_out)])
    raise typer.Exit(code)
