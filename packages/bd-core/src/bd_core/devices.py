"""How a result or a model records where it was computed."""

from __future__ import annotations

import torch


def device_label(device: str) -> str:
    """ "cpu", or "cuda: <GPU name>" (a store can hold rows from both, e.g. a CPU grid completed
    on a lent GPU; cost projections group measured times by this label)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return device
