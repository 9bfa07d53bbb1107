"""Each sub-package builds on its own into a wheel that carries its modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "package, module",
    [("bd-kernels", "bd_kernels/reference.py"), ("bd-core", "bd_core/data/formats.py"),
     ("bd-defenses", "bd_defenses/ft.py"), ("bd-cli", "bd_cli/app.py")],
)
def test_package_builds_alone(tmp_path, package, module):
    import os

    # the extension's compilation is exercised by `make setup`; here only the packaging matters
    env = {**os.environ, "BD_KERNELS_NO_EXT": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT / "packages" / package)],
        check=True, capture_output=True, env=env,
    )
    wheels = list(tmp_path.glob("*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert module in names
    # dependencies point one way: a package never ships another package's modules
    others = {"bd_kernels", "bd_core", "bd_defenses", "bd_cli"} - {package.replace("-", "_")}
    assert not any(n.split("/")[0] in others for n in names)


def test_bd_kernels_sdist_carries_the_csrc_sources(tmp_path):
    import os
    import tarfile

    env = {**os.environ, "BD_KERNELS_NO_EXT": "1"}
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT / "packages" / "bd-kernels",
                   check=True, capture_output=True, env=env)
    (sdist,) = tmp_path.glob("*.tar.gz")
    members = {m.name.split("/", 1)[1]: m for m in tarfile.open(sdist).getmembers() if "/" in m.name}
    wanted = [str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh")]
    assert len(wanted) >= 10
    for path in wanted:
        assert path in members and members[path].isfile(), path  # real files, not links to ../../csrc
