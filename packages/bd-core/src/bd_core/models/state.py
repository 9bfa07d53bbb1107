"""Loading untrusted weights into a freshly built network: every tensor must be there,
nothing extra, each with the network's own shape and dtype."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


def load_checked_state(module: nn.Module, state: dict[str, Tensor], what: str) -> nn.Module:
    """`module.load_state_dict(state)` after checking names, shapes and dtypes; ValueError names the mismatch."""
    expected = module.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{what}: tensors do not match the network (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if v.shape != expected[k].shape or v.dtype != expected[k].dtype:
            raise ValueError(f"{what}: tensor {k} is {tuple(v.shape)} {v.dtype}, "
                             f"expected {tuple(expected[k].shape)} {expected[k].dtype}")
    module.load_state_dict(state)
    return module
