"""Memory layout of a model's convolutions.

oneDNN's CPU convolutions run 1.2-1.75x faster in channels_last (NHWC) than in the default
NCHW layout at bd's widths (bench/RESULTS.md: evaluation, and attack training at quick width).
The layout changes no shape and no result beyond rounding; code that reads activations or
weights sees the same logical tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


@contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """The model's 4-D weights in channels_last while inside, back to contiguous after (the
    trainer and the defenses expect the default layout). The conversions run outside inference
    mode: weights created inside it could never be trained again. Parameters stay the same
    objects (only their data is re-laid), so an optimizer built before or inside still holds them."""
    with torch.inference_mode(False), torch.no_grad():
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            model.to(memory_format=torch.contiguous_format)
