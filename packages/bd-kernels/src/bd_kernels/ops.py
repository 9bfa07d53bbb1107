"""Public API of bd_kernels: typed wrappers over the compiled ops in `torch.ops.bd_kernels`,
with fake (meta) implementations and autograd registered so that they work under
`torch.compile`. When the extension is not built, or not built for the tensor's
device, every op runs its twin in `bd_kernels.reference` (with a one-time warning).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from bd_kernels import linkage, reference

MAX_PADDING = 1 << 20  # as csrc/ops/apply_trigger.h: no index derived from it can overflow


def _load_extension():
    """Import `bd_kernels._C`, refusing one with its own static libstdc++ (see bd_kernels.linkage):
    loaded, its first error would crash the process instead of raising."""
    spec = importlib.util.find_spec("bd_kernels._C")
    error = spec is not None and spec.origin and linkage.static_libstdcxx_error(spec.origin)
    if error:
        raise ImportError(error)
    from bd_kernels import _C  # registers torch.ops.bd_kernels.*

    return _C


try:
    _BUILD: dict = dict(_load_extension().build_info())
    _LOAD_ERROR = ""
except ImportError as _e:  # not built, or built against another torch: the reference path serves every op
    _BUILD = {}
    _LOAD_ERROR = str(_e).splitlines()[0] if str(_e) else type(_e).__name__

_warned = False


def has_extension() -> bool:
    """True when the compiled `bd_kernels._C` extension is loaded."""
    return bool(_BUILD)


def build_info() -> dict:
    """What the compiled extension contains: {'cuda': bool, 'cuda_archs': str, 'built_with_torch': str}."""
    return dict(_BUILD)


def _compiled_for(t: Tensor) -> bool:
    if not _BUILD:
        why = f"the compiled extension did not load ({_LOAD_ERROR})" if _LOAD_ERROR else "the extension is not built"
        _fallback(f"{why}; rebuild it with pip install --no-build-isolation packages/bd-kernels")
        return False
    if t.device.type == "cpu" or (t.device.type == "cuda" and _BUILD.get("cuda")):
        return True
    _fallback(f"the extension has no {t.device.type} kernels")
    return False


def _fallback(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"bd_kernels: {why}; ops run their pure-torch reference", RuntimeWarning, stacklevel=4)


# ------------------------------------------------------------------ apply_trigger


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
    out_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Fused poison -> crop/flip -> uint8-to-float -> normalize over a uint8 batch [N,C,H,W].

    poisoned: bool [N] flags or an index tensor of poisoned rows; pattern [C,H,W] or
    [N,C,H,W] in 0..255; mask [1|C,H,W] or [N,1|C,H,W] in [0,1]; mode replace, blend
    (with alpha) or add (clamped); crop_offsets int [N,2] into the zero-padded image;
    flip bool [N]. Returns out_dtype (default: torch's default dtype), contiguous or channels_last.
    """
    out_dtype = out_dtype or torch.get_default_dtype()
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
    if mode not in reference.TRIGGER_MODES:
        raise ValueError(f"mode must be one of {reference.TRIGGER_MODES}, got {mode!r}")
    if not 0 <= int(padding) <= MAX_PADDING:
        raise ValueError(f"padding must be in [0, {MAX_PADDING}], got {padding}")
    if poisoned is not None and poisoned.dtype != torch.bool:
        flags = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        flags[poisoned.long()] = True
        poisoned = flags
    if _compiled_for(images):
        return torch.ops.bd_kernels.apply_trigger(
            images,
            poisoned,
            pattern,
            mask,
            mode,
            float(alpha),
            mean,
            std,
            crop_offsets,
            int(padding),
            flip,
            out_dtype,
            channels_last,
        )
    out = reference.apply_trigger(
        images, poisoned, pattern, mask, mode, alpha, mean, std, crop_offsets, padding, flip, out_dtype
    )
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


# ------------------------------------------------------------------ channel_stats


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-channel (count int64, mean, M2, min, max float64) in one pass over [N,C,H,W] or [N,C].
    As torch's reductions, a NaN in a channel makes all its statistics NaN."""
    reference.check_channel_stats_input(x)
    if _compiled_for(x):
        return tuple(torch.ops.bd_kernels.channel_stats(x))
    return reference.channel_stats(x)


@dataclass
class ChannelStats:
    """Streaming per-channel statistics, merged batch by batch (Chan et al.'s parallel update)."""

    count: Tensor | None = None
    mean: Tensor | None = None
    m2: Tensor | None = None
    min: Tensor | None = None
    max: Tensor | None = None
    batches: int = field(default=0)

    def update(self, x: Tensor) -> ChannelStats:
        n_b, mean_b, m2_b, min_b, max_b = channel_stats(x.detach())
        if self.count is None:
            self.count, self.mean, self.m2, self.min, self.max = n_b, mean_b, m2_b, min_b, max_b
        else:
            n_a, n_bf = self.count.to(torch.float64), n_b.to(torch.float64)
            total = n_a + n_bf
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_bf / total)
            self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_bf / total)
            self.count = self.count + n_b
            self.min = torch.minimum(self.min, min_b)
            self.max = torch.maximum(self.max, max_b)
        self.batches += 1
        return self

    @property
    def var(self) -> Tensor:
        """Population variance per channel."""
        if self.count is None:
            raise ValueError("ChannelStats is empty: call update() first")
        return self.m2 / self.count.to(torch.float64)

    @property
    def unbiased_var(self) -> Tensor:
        """Sample variance per channel (divisor count - 1, at least 1), as torch.var's default."""
        if self.count is None:
            raise ValueError("ChannelStats is empty: call update() first")
        return self.m2 / (self.count.to(torch.float64) - 1).clamp_min(1)

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()


# ------------------------------------------------------------------ masked_conv2d


MASKED_CONV_PATHS = ("epilogue", "reference", "folded")
# The fastest path per device type, measured forward+backward against a plain convolution of
# the same shape (bench/RESULTS.md): on CPUs the fused epilogue is 0.91-1.09x a plain
# convolution, the eager reference up to 1.39x and the folded weight up to 1.58x (it needs the
# weight gradient even when the weights are frozen); on an H200 the epilogue was slower than the
# eager reference (bench/RESULTS-gpu.md).
FASTEST_MASKED_CONV = {"cpu": "epilogue", "cuda": "reference"}


def masked_conv_path(device_type: str) -> str:
    """The path `masked_conv2d` takes on a device type: the measured fastest, or $BD_MASKED_CONV."""
    chosen = os.environ.get("BD_MASKED_CONV", "").strip()
    if chosen and chosen not in MASKED_CONV_PATHS:
        raise ValueError(f"BD_MASKED_CONV={chosen!r}: choose one of {', '.join(MASKED_CONV_PATHS)}")
    return chosen or FASTEST_MASKED_CONV.get(device_type, "reference")


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
    path: str | None = None,
) -> Tensor:
    """y = conv(x, W) * (m + d) + b * (mb + db) per output channel, differentiable in all of them.

    Three paths give the same values and gradients (`path`, default: the fastest measured on
    the device, see `masked_conv_path`): "epilogue", ATen's convolution (oneDNN / cuDNN) with
    autograd's native backward and the per-channel scaling as one fused pass whose backward gives
    the gradients of the activations, masks and perturbations in one pass, never forming W * m;
    "reference", the same in eager ops; "folded", one convolution with the mask folded into the
    weight and bias.
    """
    path = path or masked_conv_path(x.device.type)
    if path not in MASKED_CONV_PATHS:
        raise ValueError(f"masked_conv2d path {path!r}: choose one of {', '.join(MASKED_CONV_PATHS)}")
    if path == "folded":
        return reference.masked_conv2d_folded(
            x, weight, bias, mask, perturb, bias_mask, bias_perturb, stride, padding, dilation, groups
        )
    if path == "reference" or not _compiled_for(x):
        return reference.masked_conv2d(
            x, weight, bias, mask, perturb, bias_mask, bias_perturb, stride, padding, dilation, groups
        )
    z = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    scale = mask + perturb
    shift = bias * (bias_mask + bias_perturb) if bias is not None else torch.zeros_like(scale)
    return torch.ops.bd_kernels.masked_conv2d_epilogue(z, scale, shift)


if _BUILD:

    @torch.library.register_fake("bd_kernels::apply_trigger")
    def _apply_trigger_fake(
        images, poisoned, pattern, mask, mode, alpha, mean, std, crop_offsets, padding, flip, out_dtype, channels_last
    ):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(images.shape, dtype=out_dtype, device=images.device, memory_format=fmt)

    @torch.library.register_fake("bd_kernels::channel_stats")
    def _channel_stats_fake(x):
        c = x.shape[1]
        f64 = dict(dtype=torch.float64, device=x.device)
        return (
            x.new_empty(c, dtype=torch.int64),
            x.new_empty(c, **f64),
            x.new_empty(c, **f64),
            x.new_empty(c, **f64),
            x.new_empty(c, **f64),
        )

    @torch.library.register_fake("bd_kernels::masked_conv2d_epilogue")
    def _epilogue_fake(z, scale, shift):
        fmt = torch.channels_last if _channels_last_only(z) else torch.contiguous_format
        return torch.empty(z.shape, dtype=z.dtype, device=z.device, memory_format=fmt)

    @torch.library.register_fake("bd_kernels::masked_conv2d_epilogue_backward")
    def _epilogue_backward_fake(grad_y, z, scale):
        fmt = torch.channels_last if _channels_last_only(z) else torch.contiguous_format
        gz = torch.empty(z.shape, dtype=z.dtype, device=z.device, memory_format=fmt)
        return gz, z.new_empty(z.shape[1]), z.new_empty(z.shape[1])

    def _epilogue_setup(ctx, inputs, output):
        z, scale, _shift = inputs
        ctx.save_for_backward(z, scale)

    def _epilogue_backward(ctx, grad_y):
        z, scale = ctx.saved_tensors
        grad_z, grad_scale, grad_shift = torch.ops.bd_kernels.masked_conv2d_epilogue_backward(grad_y, z, scale)
        return grad_z, grad_scale, grad_shift

    torch.library.register_autograd(
        "bd_kernels::masked_conv2d_epilogue", _epilogue_backward, setup_context=_epilogue_setup
    )


def _channels_last_only(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
