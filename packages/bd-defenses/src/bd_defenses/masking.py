"""The masked-model wrapper shared by the masking defenses (ANP, AWM, RNP, NFT).

Every convolution's output channels are scaled by a learnable mask m (and, for
adversarial neuron perturbation, a perturbation d): y = conv(x, W) * (m + d) +
b * (mb + db), computed by bd_kernels' fused `masked_conv2d`. The original
weights are shared, not copied; `bake_masks` writes the final masks into them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from bd_kernels import masked_conv2d


class MaskedConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("MaskedConv2d supports zero padding given as numbers")
        self.conv = conv
        c = conv.out_channels
        dev, dtype = conv.weight.device, conv.weight.dtype
        self.mask = nn.Parameter(torch.ones(c, device=dev, dtype=dtype))
        self.perturb = nn.Parameter(torch.zeros(c, device=dev, dtype=dtype), requires_grad=False)
        self.bias_mask = nn.Parameter(torch.ones(c, device=dev, dtype=dtype), requires_grad=False)
        self.bias_perturb = nn.Parameter(torch.zeros(c, device=dev, dtype=dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        return masked_conv2d(x, c.weight, c.bias, self.mask, self.perturb, self.bias_mask, self.bias_perturb,
                             c.stride, c.padding, c.dilation, c.groups)


def wrap_convolutions(model: nn.Module) -> dict[str, MaskedConv2d]:
    """Replace every nn.Conv2d of `model` in place by a MaskedConv2d; returns them by name."""
    wrapped: dict[str, MaskedConv2d] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d):
                masked = MaskedConv2d(child)
                setattr(module, child_name, masked)
                wrapped[f"{name}.{child_name}" if name else child_name] = masked
    return wrapped


@torch.no_grad()
def bake_masks(model: nn.Module) -> nn.Module:
    """Fold each MaskedConv2d's mask into its conv (perturbations dropped) and unwrap it."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, MaskedConv2d):
                conv = child.conv
                conv.weight.mul_(child.mask.view(-1, 1, 1, 1))
                if conv.bias is not None:
                    conv.bias.mul_(child.bias_mask)
                setattr(module, child_name, conv)
    return model


def mask_parameters(wrapped: dict[str, MaskedConv2d]) -> list[nn.Parameter]:
    return [m.mask for m in wrapped.values()]
