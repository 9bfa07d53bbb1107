"""The masked-model wrapper shared by the masking defenses (ANP, AWM, RNP, NFT).

Every convolution's output channels are scaled by a learnable mask m (and, for
adversarial neuron perturbation, a perturbation d): y = conv(x, W) * (m + d) +
b * (mb + db), computed by bd_kernels' fused `masked_conv2d`. The original
weights are shared, not copied; `bake_masks` writes the final masks into them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from bd_kernels import masked_conv2d
from torch import Tensor

from bd_defenses.surgery import fold_batchnorm


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
        return masked_conv2d(
            x,
            c.weight,
            c.bias,
            self.mask,
            self.perturb,
            self.bias_mask,
            self.bias_perturb,
            c.stride,
            c.padding,
            c.dilation,
            c.groups,
        )


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


def masked_model(model: nn.Module) -> dict[str, MaskedConv2d]:
    """Fold BN into the convolutions (eval-mode function unchanged), then wrap every conv:
    each output channel is one neuron (w, b) that the masking defenses multiply by m."""
    fold_batchnorm(model)
    wrapped = wrap_convolutions(model)
    model.eval()  # masks are learned on the deployed (eval-mode) function; see docs/decisions.md
    for p in model.parameters():
        p.requires_grad_(False)
    for m in wrapped.values():
        m.mask.requires_grad_(True)
    return wrapped


@torch.no_grad()
def clip_masks(wrapped: dict[str, MaskedConv2d], low: float | list[float] = 0.0, high: float = 1.0) -> None:
    lows = low if isinstance(low, list) else [low] * len(wrapped)
    for m, lo in zip(wrapped.values(), lows, strict=True):
        m.mask.clamp_(lo, high)


def mask_scores(wrapped: dict[str, MaskedConv2d]) -> dict[str, Tensor]:
    return {name: m.mask.detach().clone() for name, m in wrapped.items()}


@torch.no_grad()
def set_binary_masks(wrapped: dict[str, MaskedConv2d], scores: dict[str, Tensor], threshold: float) -> int:
    """Mask = 0 where score <= threshold (pruned), 1 elsewhere; returns the number pruned."""
    pruned = 0
    for name, m in wrapped.items():
        keep = scores[name] > threshold
        m.mask.copy_(keep.to(m.mask.dtype))
        pruned += int((~keep).sum())
    return pruned


def prune_by_threshold(
    wrapped: dict[str, MaskedConv2d], scores: dict[str, Tensor], thresholds: list[float], acceptable
) -> tuple[float | None, int]:
    """Raise the pruning threshold step by step while `acceptable()` (clean accuracy on the
    defender's data within tolerance) holds; the masks of the last accepted threshold are
    kept. Returns (threshold, neurons pruned); (None, 0) if even the first is rejected."""
    chosen, chosen_pruned = None, 0
    for t in thresholds:
        pruned = set_binary_masks(wrapped, scores, t)
        if not acceptable():
            break
        chosen, chosen_pruned = t, pruned
    if chosen is None:
        set_binary_masks(wrapped, scores, float("-inf"))
    else:
        set_binary_masks(wrapped, scores, chosen)
    return chosen, chosen_pruned


def mask_summary(wrapped: dict[str, MaskedConv2d]) -> dict[str, float]:
    masks = torch.cat([m.mask.detach().flatten().cpu() for m in wrapped.values()])
    return {
        "neurons": int(masks.numel()),
        "mask_zero": int((masks == 0).sum()),
        "mask_below_half": int((masks < 0.5).sum()),
        "mask_mean": round(float(masks.mean()), 4),
    }
