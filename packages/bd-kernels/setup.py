"""Build of bd_kernels: the `bd_kernels._C` torch extension (C++ always, CUDA when a
toolkit is found or FORCE_CUDA=1) plus the pure-Python package.

Install with `pip install --no-build-isolation packages/bd-kernels` so the extension
is compiled against the torch already installed. BD_KERNELS_NO_EXT=1 skips the
extension (every op then runs its reference implementation).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"  # a link to the repository's csrc/ (copied as files into the sdist)


def find_cuda_home() -> None:
    """Point CUDA_HOME at a real toolkit before torch looks for one.

    torch derives CUDA_HOME from `which nvcc`; where nvcc is a wrapper script in
    /usr/local/bin that gives /usr/local, which holds no libcudart.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for cand in [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]:
        if (cand / "bin" / "nvcc").exists():
            os.environ["CUDA_HOME"] = str(cand)
            return


def load_linkage():
    """bd_kernels/linkage.py, loaded by path: importing the package would load a stale extension."""
    spec = importlib.util.spec_from_file_location("bd_kernels_linkage", HERE / "src" / "bd_kernels" / "linkage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


linkage = load_linkage()


def checked_build_ext(base):
    """torch's BuildExtension, then a check that the extension shares the process's libstdc++."""

    class CheckedBuildExtension(base):
        def build_extension(self, ext) -> None:
            super().build_extension(ext)
            error = linkage.static_libstdcxx_error(self.get_ext_fullpath(ext.name))
            if error:
                raise RuntimeError(error)

    return CheckedBuildExtension


def cuda_home() -> str | None:
    from torch.utils import cpp_extension

    return cpp_extension.CUDA_HOME


def extension_modules():
    if os.environ.get("BD_KERNELS_NO_EXT") == "1":
        return [], {}
    find_cuda_home()
    import torch
    from torch.utils import cpp_extension

    sources = sorted(
        glob.glob(str(CSRC / "module.cpp"))
        + glob.glob(str(CSRC / "ops" / "*.cpp"))
        + glob.glob(str(CSRC / "ops" / "cpu" / "*.cpp"))
    )
    sources = [os.path.relpath(s, HERE) for s in sources]
    version = torch.__version__.split("+")[0]
    # -g0: Python's own CFLAGS carry -g, and debug info for torch's templates costs a third of
    # the compile time of a wheel nobody debugs (`make asan` builds its own copy with -g)
    cxx = ["-O3", "-g0", "-fopenmp-simd", f'-DBD_TORCH_VERSION="{version}"']
    link = list(linkage.DYNAMIC_LIBSTDCXX)
    if os.environ.get("BD_KERNELS_SANITIZE") == "address":  # `make asan`: AddressSanitizer build of the CPU ops
        cxx = [
            "-O1",
            "-g",
            "-fsanitize=address",
            "-fno-omit-frame-pointer",
            "-fopenmp-simd",
            f'-DBD_TORCH_VERSION="{version}"',
        ]
        link += ["-fsanitize=address"]
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (
        cuda_home() is not None and os.environ.get("BD_KERNELS_CPU_ONLY") != "1"
    )
    if not with_cuda:
        ext = cpp_extension.CppExtension(
            "bd_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
        return [ext], {"build_ext": checked_build_ext(cpp_extension.BuildExtension).with_options(use_ninja=True)}

    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += [os.path.relpath(s, HERE) for s in sorted(glob.glob(str(CSRC / "ops" / "cuda" / "*.cu")))]
    include_dirs, library_dirs = [], []
    home = Path(cuda_home() or os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    # some CUDA 13 installs keep libcudart in lib/, not lib64/
    library_dirs += [str(p) for p in (home / "lib64", home / "lib") if p.is_dir()]
    # pip-installed CUDA headers (cuBLAS, cuSPARSE, ...) that ATen's CUDA headers include
    for site in sys.path:
        for sub in (
            "nvidia/cu13/include",
            "nvidia/cuda_runtime/include",
            "nvidia/cublas/include",
            "nvidia/cusparse/include",
        ):
            cand = Path(site) / sub
            if cand.is_dir():
                include_dirs.append(str(cand))
    flags = [f'-DBD_CUDA_ARCHS="{archs}"', "-DBD_WITH_CUDA"]
    ext = cpp_extension.CUDAExtension(
        "bd_kernels._C",
        sources,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        extra_compile_args={"cxx": cxx + flags, "nvcc": ["-O3", "--use_fast_math"] + flags},
        extra_link_args=link,
    )
    return [ext], {"build_ext": checked_build_ext(cpp_extension.BuildExtension).with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
