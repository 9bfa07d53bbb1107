"""Model surgery shared by the pruning and masking defenses: replace a submodule by name,
fold BatchNorm into the convolution it normalizes, zero output channels, and install a
permanent channel mask on a feature map."""

from __future__ import annotations

import torch
import torch.nn as nn
from bd_core.models import anatomy
from torch import Tensor


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, image_size: int | None = None) -> nn.Module:
    """Fold every BN that directly normalizes a conv's output into that conv (eval-mode
    semantics) and replace the BN by Identity. The function computed in eval mode is
    unchanged; each conv output channel is then one neuron with weight w and bias b, the
    unit the masking defenses' equations (survey Eq. 5-13) multiply by m."""
    for _conv_name, conv, bn_name, bn in anatomy(model, image_size=image_size).conv_bn:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        new_bias = bn.bias + (bias - bn.running_mean) * scale
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.clone())
        else:
            conv.bias.copy_(new_bias)
        set_module(model, bn_name, nn.Identity())
    return model


@torch.no_grad()
def zero_channels(conv: nn.Conv2d, channels: Tensor, bn: nn.BatchNorm2d | None = None) -> None:
    """Prune output channels: the conv's filters (and bias) and, when a BN follows, its
    affine weight and bias, so the pruned channel outputs exactly 0."""
    channels = channels.to(conv.weight.device)
    conv.weight[channels] = 0
    if conv.bias is not None:
        conv.bias[channels] = 0
    if bn is not None:
        bn.weight[channels] = 0
        bn.bias[channels] = 0


@torch.no_grad()
def zero_bn_channels(bn: nn.BatchNorm2d, channels: Tensor) -> None:
    """Prune channels at a BatchNorm: weight and bias 0, so in eval mode each outputs exactly 0
    (how BNP's and CLP's authors prune)."""
    channels = channels.to(bn.weight.device)
    bn.weight[channels] = 0
    bn.bias[channels] = 0


class ChannelMask(nn.Module):
    """Multiplies a feature map's channels by a fixed 0/1 mask: a pruned channel stays
    pruned when the model is fine-tuned afterwards (FP, FMP)."""

    def __init__(self, inner: nn.Module, keep: Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("keep", keep.float())

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        return y * self.keep.view(1, -1, *([1] * (y.dim() - 2)))


def mask_feature_channels(model: nn.Module, module_name: str, keep: Tensor) -> ChannelMask:
    inner = model.get_submodule(module_name)
    if isinstance(inner, ChannelMask):
        inner.keep.copy_(keep.float())
        return inner
    masked = ChannelMask(inner, keep.to(next(model.parameters()).device))
    set_module(model, module_name, masked)
    return masked
