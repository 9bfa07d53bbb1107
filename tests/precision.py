"""float64 for the tests that assert on the outcome of training."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def float64():
    """Compute in float64 (torch's default dtype; bd converts images to it). Training on tiny data
    is chaotic: float32 rounding, which differs with the CPU's vector ISA (ATen's and oneDNN's
    kernels) and the thread count, grows into another model, as another seed would. In float64
    the same differences start nine orders of magnitude smaller and stay far below any asserted
    margin, so a learned outcome holds on every x86-64 (docs/decisions.md; `make test-isa`)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
