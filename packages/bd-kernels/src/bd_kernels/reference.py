"""Pure-torch reference implementations of bd's fused ops.

These define the semantics: the compiled kernels must match them (tests use them
as the oracle) and they are the fallback when the extension is not built.

Pixel conventions: `images` are uint8 [N,C,H,W] in 0..255; `pattern` is float in
the same 0..255 scale (for mode "add" it is a signed residual); `mask` is float in
[0,1]; `mean`/`std` are per-channel in the 0..1 scale, as torchvision's Normalize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TRIGGER_MODES = ("replace", "blend", "add")


def _rows(t: Tensor, rows: Tensor) -> Tensor:
    """Per-sample tensors ([N,...]) are indexed by the poisoned rows; shared ones broadcast."""
    return t[rows] if t.dim() == 4 else t.unsqueeze(0)


def apply_trigger(
    images: Tensor,
    poisoned: Tensor | None,
    pattern: Tensor | None,
    mask: Tensor | None,
    mode: str,
    alpha: float,
    mean: Tensor,
    std: Tensor,
    crop_offsets: Tensor | None = None,
    padding: int = 0,
    flip: Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Poison the selected rows, then crop/flip and normalize, returning float images.

    poisoned: bool [N]; pattern: [C,H,W] or [N,C,H,W]; mask: [1|C,H,W] or [N,1|C,H,W].
    replace: x + m (p - x); blend: x + alpha m (p - x); add: clamp(x + m p, 0, 255).
    crop_offsets: int [N,2] (dy, dx) in [0, 2*padding] into the zero (black) padded image.
    flip: bool [N], horizontal flip applied after the crop.
    """
    if mode not in TRIGGER_MODES:
        raise ValueError(f"mode must be one of {TRIGGER_MODES}, got {mode!r}")
    n, c, h, w = images.shape
    if n == 0:  # nothing to poison, crop or flip
        return torch.empty(images.shape, dtype=out_dtype, device=images.device)
    x = images.to(torch.float32)
    if poisoned is not None and pattern is not None and bool(poisoned.any()):
        rows = poisoned.nonzero().squeeze(1)
        xp = x[rows]
        p = _rows(pattern.to(torch.float32), rows)
        m = _rows(mask.to(torch.float32), rows) if mask is not None else torch.ones(1, device=x.device)
        if mode == "replace":
            xp = xp + m * (p - xp)
        elif mode == "blend":
            xp = xp + alpha * m * (p - xp)
        else:
            xp = (xp + m * p).clamp_(0.0, 255.0)
        x[rows] = xp
    if crop_offsets is not None or flip is not None:
        x = _crop_flip(x, crop_offsets, padding, flip)
    scale = (1.0 / (255.0 * std.to(x))).view(1, c, 1, 1)
    shift = (-mean.to(x) / std.to(x)).view(1, c, 1, 1)
    return x.mul_(scale).add_(shift).to(out_dtype)


def _crop_flip(x: Tensor, offsets: Tensor | None, padding: int, flip: Tensor | None) -> Tensor:
    """out[n,c,i,j] = padded[n,c,dy+i,dx+j'] with j' = W-1-j for flipped rows: one gather."""
    n, c, h, w = x.shape
    dev = x.device
    if offsets is None:
        offsets = torch.full((n, 2), padding, dtype=torch.long, device=dev)
    offsets = offsets.to(dev, torch.long)
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding), value=0.0)
    rows = offsets[:, 0:1] + torch.arange(h, device=dev)  # [N,H]
    cols = torch.arange(w, device=dev).expand(n, w)
    if flip is not None:
        cols = torch.where(flip.to(dev).view(n, 1), cols.flip(1), cols)
    cols = cols + offsets[:, 1:2]  # [N,W]
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-channel (count, mean, M2, min, max) of x [N,C,H,W] or [N,C], accumulated in float64.

    M2 is the sum of squared deviations from the mean (variance = M2 / count).
    """
    check_channel_stats_input(x)
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1).to(torch.float64)
    count = torch.full((c,), flat.shape[1], dtype=torch.int64, device=x.device)
    mean = flat.mean(dim=1)
    m2 = ((flat - mean[:, None]) ** 2).sum(dim=1)
    return count, mean, m2, flat.amin(dim=1), flat.amax(dim=1)


def check_channel_stats_input(x: Tensor) -> None:
    """Statistics need a floating [N,C] or [N,C,H,W] tensor with at least one value per channel."""
    if x.dim() not in (2, 4):
        raise ValueError(f"channel_stats expects [N,C] or [N,C,H,W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"channel_stats expects a floating tensor, got {x.dtype}")
    if x.shape[1] == 0 or x.numel() == 0:
        raise ValueError(f"channel_stats needs at least one value per channel, got shape {tuple(x.shape)}")


def masked_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    perturb: Tensor,
    bias_mask: Tensor,
    bias_perturb: Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """y = conv(x, W) * (m + d) + b * (mb + db), per output channel.

    The result has the convolution's dtype (that of x and W): masks, perturbations and the
    bias are cast to it, as a BatchNorm's affine parameters are under mixed precision."""
    y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    y = y * (mask + perturb).to(y.dtype).view(1, -1, 1, 1)
    if bias is not None:
        y = y + (bias * (bias_mask + bias_perturb)).to(y.dtype).view(1, -1, 1, 1)
    return y


def masked_conv2d_folded(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    perturb: Tensor,
    bias_mask: Tensor,
    bias_perturb: Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """`masked_conv2d` as one convolution: the scale folded into the weight (conv is linear in W
    per output channel), the masked bias as its bias."""
    scale = (mask + perturb).to(weight.dtype)
    folded_bias = (bias * (bias_mask + bias_perturb)).to(weight.dtype) if bias is not None else None
    return F.conv2d(x, weight * scale.view(-1, 1, 1, 1), folded_bias, stride, padding, dilation, groups)
