"""Property-based fuzzing of every compiled op against its pure-torch reference.

Shapes from empty batches to 64 x 64 x 70 x 70, odd and even sides, padding larger than the
image, crop offsets at both extremes, every mode and dtype, channels_last and strided inputs,
NaN and inf in the statistics input. The properties: no crash, and the same answer as
`bd_kernels.reference` (or the same refusal). `make asan` runs this file against an
AddressSanitizer build of the CPU kernels, so an out-of-bounds access fails there too.
"""

from __future__ import annotations

import os

import pytest
import torch
from bd_kernels import apply_trigger, channel_stats, masked_conv2d, reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import needs_extension

pytestmark = needs_extension

EXAMPLES = int(os.environ.get("BD_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OUT_TOLERANCE = {torch.float32: 2e-5, torch.float64: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (every other column of a wider tensor)."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


@st.composite
def trigger_calls(draw):
    n = draw(st.integers(0, 64))
    c = draw(st.sampled_from([1, 2, 3, 4, 16, 64]))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    if n * c * h * w > 2_000_000:  # keep one example under a second; the extremes still vary
        c = 1
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    if draw(st.booleans()):
        images = strided(images)
    mode = draw(st.sampled_from(["replace", "blend", "add"]))
    kwargs = {
        "mode": mode,
        "alpha": draw(st.floats(0, 1)),
        "mean": torch.rand(c, generator=g),
        "std": torch.rand(c, generator=g) * 0.5 + 0.05,
        "out_dtype": draw(st.sampled_from(list(OUT_TOLERANCE))),
        "channels_last": draw(st.booleans()),
    }
    poisoned = pattern = mask = None
    if draw(st.booleans()):
        poisoned = torch.rand(n, generator=g) < 0.5
        per_sample = draw(st.booleans())
        pattern = torch.rand((n, c, h, w) if per_sample else (c, h, w), generator=g) * 255
        if mode == "add":
            pattern = pattern - 127.5
        mask_channels = draw(st.sampled_from([None, 1, c]))
        if mask_channels is not None:
            mask = torch.rand((n, mask_channels, h, w) if per_sample else (mask_channels, h, w), generator=g)
    padding = draw(st.sampled_from([0, 1, 4, max(h, w), 2 * max(h, w) + 3]))
    if draw(st.booleans()):
        extreme = draw(st.sampled_from(["low", "high", "random"]))
        if extreme == "low":
            offsets = torch.zeros(n, 2, dtype=torch.long)
        elif extreme == "high":
            offsets = torch.full((n, 2), 2 * padding, dtype=torch.long)
        else:
            offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=g)
        kwargs["crop_offsets"] = offsets
    if draw(st.booleans()):
        kwargs["flip"] = torch.rand(n, generator=g) < 0.5
    return images, poisoned, pattern, mask, padding, kwargs


@FUZZ
@given(trigger_calls())
def test_apply_trigger_fuzz(call):
    images, poisoned, pattern, mask, padding, kwargs = call
    got = apply_trigger(images, poisoned, pattern, mask, padding=padding, **kwargs)
    want = reference.apply_trigger(
        images,
        poisoned,
        pattern,
        mask,
        kwargs["mode"],
        kwargs["alpha"],
        kwargs["mean"],
        kwargs["std"],
        kwargs.get("crop_offsets"),
        padding,
        kwargs.get("flip"),
        kwargs["out_dtype"],
    )
    assert got.shape == images.shape and got.dtype == kwargs["out_dtype"]
    tol = OUT_TOLERANCE[kwargs["out_dtype"]]
    torch.testing.assert_close(got.double(), want.double(), atol=tol * 8, rtol=tol)


def test_apply_trigger_padding_wider_than_the_image_stays_in_bounds():
    """The reported corruption: padding 100 on a 2-pixel-wide image, offset at the left extreme."""
    images = torch.zeros(1, 3, 4, 2, dtype=torch.uint8)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.5)
    for padding in (100, 100_000):
        for offsets in ([[2 * padding, 0]], [[0, 2 * padding]], [[padding, padding]]):
            out = apply_trigger(images, mean=mean, std=std, crop_offsets=torch.tensor(offsets), padding=padding)
            want = (
                reference.apply_trigger(
                    images, None, None, None, "replace", 1.0, mean, std, torch.tensor(offsets), padding, None
                )
                if padding < 1000
                else None
            )
            assert out.shape == images.shape
            if want is not None:
                torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="padding must be in"):
        apply_trigger(images, mean=mean, std=std, padding=1 << 30)


@st.composite
def stats_inputs(draw):
    rank = draw(st.sampled_from([2, 4]))
    n, c = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    shape = (n, c) if rank == 2 else (n, c, draw(st.integers(1, 20)), draw(st.integers(1, 20)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1.0, 1e4])) + draw(
        st.sampled_from([0.0, 5.0, -1e6])
    )
    special = draw(st.sampled_from([None, "nan", "inf", "-inf", "both-inf"]))
    if special:
        flat = x.view(-1)
        picks = torch.randint(0, flat.numel(), (draw(st.integers(1, 3)),), generator=g)
        values = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
        if special == "both-inf":
            flat[picks[0]] = float("inf")
            flat[picks[-1]] = float("-inf")
        else:
            flat[picks] = values[special]
    x = x.to(draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    if layout == "channels_last" and rank == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = strided(x)
    return x


@FUZZ
@given(stats_inputs())
def test_channel_stats_fuzz(x):
    got, want = channel_stats(x), reference.channel_stats(x)
    assert torch.equal(got[0], want[0])
    for name, g, w in zip(("mean", "m2", "min", "max"), got[1:], want[1:], strict=True):
        scale = w.abs().nan_to_num(posinf=0, neginf=0).max().clamp_min(1.0)
        torch.testing.assert_close(
            g,
            w,
            atol=1e-9 * float(scale) * x.shape[0],
            rtol=1e-7,
            equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def test_channel_stats_propagates_nan_and_refuses_empty_input():
    x = torch.ones(4, 2, 3, 3)
    x[1, 0, 1, 1] = float("nan")
    count, mean, m2, lo, hi = channel_stats(x)
    assert all(torch.isnan(t[0]) for t in (mean, m2, lo, hi))
    assert not any(torch.isnan(t[1]) for t in (mean, m2, lo, hi))
    for empty in (torch.zeros(0, 3, 2, 2), torch.zeros(2, 0)):
        for op in (channel_stats, reference.channel_stats):
            with pytest.raises(ValueError, match="at least one value per channel"):
                op(empty)


@st.composite
def conv_calls(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    n, size = draw(st.integers(1, 4)), draw(st.integers(3, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, w = mk(n, cin, size, size).to(dtype), mk(cout, cin // groups, 3, 3).to(dtype)
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    bias = mk(cout) if draw(st.booleans()) else None
    masks = [mk(cout).abs(), mk(cout) * 0.1, mk(cout).abs(), mk(cout) * 0.1]  # float32: as the defenses hold them
    stride, padding = draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1]))
    return x, w, bias, masks, stride, padding, groups


@FUZZ
@given(conv_calls())
def test_masked_conv2d_fuzz(call):
    x, w, bias, masks, stride, padding, groups = call
    leaves = [t.clone().requires_grad_() for t in masks]
    ref_leaves = [t.clone().requires_grad_() for t in masks]
    got = masked_conv2d(x, w, bias, *leaves, stride, padding, 1, groups)
    want = reference.masked_conv2d(x, w, bias, *ref_leaves, stride, padding, 1, groups)
    assert got.dtype == want.dtype == x.dtype  # one dtype rule: the convolution's
    tol = 2e-2 if x.dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.float(), want.float(), atol=tol * 4, rtol=tol)
    gy = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).to(got.dtype)
    grads = torch.autograd.grad(got, leaves, gy, allow_unused=True)
    grads_ref = torch.autograd.grad(want, ref_leaves, gy, allow_unused=True)
    for gr, r in zip(grads, grads_ref, strict=True):
        if r is None or gr is None:
            assert (gr is None or not gr.any()) and (r is None or not r.any())
            continue
        assert gr.dtype == r.dtype == torch.float32
        torch.testing.assert_close(gr, r, atol=tol * 50 * x.shape[0] * x.shape[-1] ** 2, rtol=tol * 4)
