"""The extension shares the process's libstdc++ (bd_kernels.linkage): a static copy inside it made
every error raised by a kernel crash Python on the H200 lent on 2026-12-04."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from bd_kernels import linkage
from bd_kernels import ops as kops
from kernel_cases import needs_extension

# a TORCH_CHECK's message in miniature: an int formatted into a stream, then thrown
SOURCE = """#include <sstream>
#include <stdexcept>
void fail(long value) { std::ostringstream message; message << value; throw std::runtime_error(message.str()); }
"""


def extension_path() -> str:
    return importlib.util.find_spec("bd_kernels._C").origin


@needs_extension
def test_the_built_extension_needs_the_shared_libstdcxx():
    assert "libstdc++.so.6" in linkage.needed_libraries(extension_path())
    assert linkage.static_libstdcxx_error(extension_path()) is None


@needs_extension
@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed")
def test_needed_libraries_reads_what_readelf_reads():
    listing = subprocess.run(["readelf", "-d", extension_path()], capture_output=True, text=True, check=True).stdout
    want = [line.split("[", 1)[1].rstrip("]") for line in listing.splitlines() if "(NEEDED)" in line]
    assert linkage.needed_libraries(extension_path()) == want and len(want) >= 3


@pytest.fixture
def static_only_toolchain(tmp_path: Path) -> Path:
    """A folder laid out like /opt/gcc's library folder on that H200: libstdc++.a, and a relative
    libstdc++.so link that does not resolve from there (build_shared_object searches it first)."""
    folder = tmp_path / "toolchain"
    folder.mkdir()
    compiler = shutil.which("g++")
    archive = (
        compiler
        and subprocess.run([compiler, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    )
    if not archive or not Path(archive).is_file():
        pytest.skip("no g++ with a static libstdc++.a to stand in for that toolchain")
    shutil.copy(archive, folder / "libstdc++.a")
    (folder / "libstdc++.so").symlink_to("../../../x86_64-linux-gnu/libstdc++.so.6")
    return folder


def build_shared_object(tmp_path: Path, name: str, *flags: str) -> Path:
    (tmp_path / "fail.cpp").write_text(SOURCE)
    out = tmp_path / name
    subprocess.run(
        ["g++", "-shared", "-fPIC", f"-B{tmp_path / 'toolchain'}/", str(tmp_path / "fail.cpp"), "-o", str(out), *flags],
        check=True,
        capture_output=True,
    )
    return out


def test_the_link_flags_take_the_shared_libstdcxx_where_the_toolchain_finds_only_the_static_one(
    tmp_path, static_only_toolchain
):
    plain = build_shared_object(tmp_path, "plain.so")
    # the failure, reproduced: the compiler's own -lstdc++ took the archive
    assert not any(name.startswith("libstdc++") for name in linkage.needed_libraries(plain))
    assert "statically" in linkage.static_libstdcxx_error(plain)
    fixed = build_shared_object(tmp_path, "fixed.so", *linkage.DYNAMIC_LIBSTDCXX)
    assert "libstdc++.so.6" in linkage.needed_libraries(fixed)
    assert linkage.static_libstdcxx_error(fixed) is None


def test_bd_kernels_refuses_to_load_an_extension_with_its_own_libstdcxx(tmp_path, static_only_toolchain, monkeypatch):
    plain = build_shared_object(tmp_path, "plain.so")  # stands in for bd_kernels/_C*.so
    spec = importlib.machinery.ModuleSpec("bd_kernels._C", None, origin=str(plain))
    monkeypatch.setattr(kops.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ImportError, match="libstdc\\+\\+ linked in statically"):
        kops._load_extension()


def test_files_that_are_not_elf_objects_need_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("not an ELF object\n")
    assert linkage.needed_libraries(tmp_path / "notes.txt") == []
    assert linkage.static_libstdcxx_error(tmp_path / "notes.txt") is None
