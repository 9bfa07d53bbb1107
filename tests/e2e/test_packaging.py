"""Each sub-package builds on its own into a wheel that carries its modules, and the packages
depend on each other one way only: kernels <- core <- defenses <- cli."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "package, module",
    [
        ("bd-kernels", "bd_kernels/reference.py"),
        ("bd-core", "bd_core/data/formats.py"),
        ("bd-defenses", "bd_defenses/ft.py"),
        ("bd-cli", "bd_cli/app.py"),
    ],
)
def test_package_builds_alone(tmp_path, package, module):
    import os

    # the extension's compilation is exercised by `make setup`; here only the packaging matters
    env = {**os.environ, "BD_KERNELS_NO_EXT": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT / "packages" / package),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    wheels = list(tmp_path.glob("*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert module in names
    # a package never ships another package's modules
    others = {"bd_kernels", "bd_core", "bd_defenses", "bd_cli"} - {package.replace("-", "_")}
    assert not any(n.split("/")[0] in others for n in names)
    # ... and declares as dependencies only the packages below it
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = {
        line.split(":", 1)[1].strip().split()[0].split(";")[0].split(">")[0].split("=")[0].split("<")[0]
        for line in zipfile.ZipFile(wheels[0]).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    }
    assert {r for r in requires if r.startswith("bd-")} <= set(ORDER[: ORDER.index(package)])


ORDER = ["bd-kernels", "bd-core", "bd-defenses", "bd-cli"]


def imported_bd_packages(source: Path) -> set[str]:
    """The bd packages a Python file imports (absolute imports, at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            else []
        )
        found |= {
            n.split(".")[0].replace("_", "-")
            for n in names
            if n.split(".")[0] in {"bd_kernels", "bd_core", "bd_defenses", "bd_cli"}
        }
    return found


@pytest.mark.parametrize("package", ORDER)
def test_imports_run_one_way(package):
    """No module of a package imports a package above it (also not lazily, inside a function)."""
    allowed = set(ORDER[: ORDER.index(package) + 1])
    sources = list((ROOT / "packages" / package / "src").rglob("*.py"))
    assert sources
    wrong = {str(f.relative_to(ROOT)): sorted(imported_bd_packages(f) - allowed) for f in sources}
    assert not {f: w for f, w in wrong.items() if w}


def test_the_import_check_sees_a_wrong_import(tmp_path):
    """The check above can fail: an upward import, even inside a function, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def late():\n    from bd_cli.app import app\n    import bd_defenses.ft\n")
    assert imported_bd_packages(bad) == {"bd-cli", "bd-defenses"}


def test_bd_kernels_sdist_carries_the_csrc_sources(tmp_path):
    import os
    import tarfile

    env = {**os.environ, "BD_KERNELS_NO_EXT": "1"}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
        cwd=ROOT / "packages" / "bd-kernels",
        check=True,
        capture_output=True,
        env=env,
    )
    (sdist,) = tmp_path.glob("*.tar.gz")
    members = {m.name.split("/", 1)[1]: m for m in tarfile.open(sdist).getmembers() if "/" in m.name}
    wanted = [str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh")]
    assert len(wanted) >= 10
    for path in wanted:
        assert path in members and members[path].isfile(), path  # real files, not links to ../../csrc


def test_the_code_follows_the_lint_rules():
    """`make lint` as part of the suite, so that bd's conventions (pyproject's ruff settings:
    pycodestyle, pyflakes, import order, bugbear, pyupgrade; `ruff format`, so that no line is
    wrapped by hand) cannot drift between sessions."""
    pytest.importorskip("ruff")  # pinned in the Makefile: a new release may add findings to the same rule sets
    for command in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "packages", "tests", "experiments", "bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout[-3000:]
