"""Public API of bd_kernels: typed wrappers that run the compiled op when it is
built and otherwise fall back to `bd_kernels.reference` (with a one-time warning)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bd_kernels import reference

_warned = False


def has_extension() -> bool:
    """True when the compiled `bd_kernels._C` extension is importable."""
    try:
        from bd_kernels import _C  # noqa: F401
    except ImportError:
        return False
    return True


def _fallback(op: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"bd_kernels: compiled extension not built; {op} and the other ops run their "
            "pure-torch reference (reinstall with `pip install --no-build-isolation packages/bd-kernels`)",
            RuntimeWarning,
            stacklevel=3,
        )


def apply_trigger(
    images: Tensor,
    poisoned: Tensor | None = None,
    pattern: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    mode: str = "replace",
    alpha: float = 1.0,
    mean: Tensor,
    std: Tensor,
    crop_offsets: Tensor | None = None,
    padding: int = 0,
    flip: Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fused poison -> crop/flip -> uint8-to-float -> normalize over a batch (see reference)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
    if poisoned is not None and poisoned.dtype != torch.bool:
        index = poisoned
        poisoned = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        poisoned[index.long()] = True
    _fallback("apply_trigger")
    return reference.apply_trigger(
        images, poisoned, pattern, mask, mode, alpha, mean, std, crop_offsets, padding, flip, out_dtype
    )


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-channel (count, mean, M2, min, max) in one pass over [N,C,H,W] or [N,C]."""
    _fallback("channel_stats")
    return reference.channel_stats(x)


@dataclass
class ChannelStats:
    """Streaming per-channel statistics, merged batch by batch (Chan et al.'s parallel update)."""

    count: Tensor | None = None
    mean: Tensor | None = None
    m2: Tensor | None = None
    min: Tensor | None = None
    max: Tensor | None = None
    _batches: int = field(default=0, repr=False)

    def update(self, x: Tensor) -> "ChannelStats":
        n_b, mean_b, m2_b, min_b, max_b = channel_stats(x.detach())
        if self.count is None:
            self.count, self.mean, self.m2, self.min, self.max = n_b, mean_b, m2_b, min_b, max_b
        else:
            n_a = self.count.to(torch.float64)
            n_bf = n_b.to(torch.float64)
            total = n_a + n_bf
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_bf / total)
            self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_bf / total)
            self.count = self.count + n_b
            self.min = torch.minimum(self.min, min_b)
            self.max = torch.maximum(self.max, max_b)
        self._batches += 1
        return self

    @property
    def var(self) -> Tensor:
        """Population variance per channel."""
        if self.count is None:
            raise ValueError("ChannelStats is empty: call update() first")
        return self.m2 / self.count.to(torch.float64)

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()


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
    """Convolution with a per-output-channel mask/perturbation epilogue (see reference)."""
    _fallback("masked_conv2d")
    return reference.masked_conv2d(
        x, weight, bias, mask, perturb, bias_mask, bias_perturb, stride, padding, dilation, groups
    )
