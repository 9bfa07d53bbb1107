"""Device parametrization shared by the kernel tests (cuda cases skip without a GPU)."""

import bd_kernels
import pytest
import torch

CUDA = torch.cuda.is_available() and bd_kernels.build_info().get("cuda", False)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and a CUDA build")]),
]
needs_extension = pytest.mark.skipif(not bd_kernels.has_extension(), reason="compiled extension not built")
