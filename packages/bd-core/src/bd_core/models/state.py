"""Loading untrusted weights into a freshly built network: every tensor must be there,
nothing extra, each with the network's own shape and dtype."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from bd_core.errors import Diverged


def load_checked_state(module: nn.Module, state: dict[str, Tensor], what: str) -> nn.Module:
    """`module.load_state_dict(state)` after checking names, shapes and dtypes; ValueError names the mismatch."""
    expected = module.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{what}: tensors do not match the network (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        # a float tensor stored in another float precision (a model trained in float64) is cast
        same_kind = v.dtype == expected[k].dtype or (v.is_floating_point() and expected[k].is_floating_point())
        if v.shape != expected[k].shape or not same_kind:
            raise ValueError(
                f"{what}: tensor {k} is {tuple(v.shape)} {v.dtype}, "
                f"expected {tuple(expected[k].shape)} {expected[k].dtype}"
            )
    module.load_state_dict(state)  # copies into the module's own tensors, in their dtype
    return module


@torch.no_grad()
def check_finite(model: nn.Module, what: str) -> None:
    """Raise Diverged naming the first parameter or buffer of `model` holding NaN or infinity: a
    network in that state answers one class for every input, which would read as a perfect attack."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise Diverged(
                f"{what}: {name} holds non-finite values (training diverged); lower its learning rate (or step size)"
            )
