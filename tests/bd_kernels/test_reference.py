"""The reference ops against direct per-sample computations written from their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bd_kernels import ChannelStats, apply_trigger, channel_stats, masked_conv2d


def per_sample_oracle(images, poisoned, pattern, mask, mode, alpha, mean, std, offsets, padding, flip):
    out = []
    for i in range(images.shape[0]):
        x = images[i].double()
        if poisoned[i]:
            p = (pattern[i] if pattern.dim() == 4 else pattern).double()
            m = (mask[i] if mask.dim() == 4 else mask).double()
            if mode == "replace":
                x = x * (1 - m) + p * m
            elif mode == "blend":
                x = x * (1 - alpha * m) + alpha * m * p
            else:
                x = (x + m * p).clamp(0, 255)
        if offsets is not None:
            xp = F.pad(x, (padding,) * 4)
            dy, dx = offsets[i].tolist()
            x = xp[:, dy : dy + images.shape[2], dx : dx + images.shape[3]]
        if flip is not None and flip[i]:
            x = x.flip(-1)
        x = (x / 255 - mean.double().view(-1, 1, 1)) / std.double().view(-1, 1, 1)
        out.append(x)
    return torch.stack(out).float()


@pytest.mark.parametrize("mode", ["replace", "blend", "add"])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (5, 3, 32, 32), (4, 3, 31, 29)])
def test_apply_trigger_matches_per_sample_definition(mode, per_sample, shape):
    g = torch.Generator().manual_seed(1)
    n, c, h, w = shape
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    poisoned = torch.rand(n, generator=g) < 0.6
    poisoned[0] = True
    pshape = (n, c, h, w) if per_sample else (c, h, w)
    pattern = torch.rand(pshape, generator=g) * 255
    if mode == "add":
        pattern = pattern - 127.5
    mask = (torch.rand((n, 1, h, w) if per_sample else (1, h, w), generator=g) > 0.5).float()
    mean, std = torch.rand(c, generator=g) * 0.5 + 0.25, torch.rand(c, generator=g) * 0.2 + 0.2
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    got = apply_trigger(
        images,
        poisoned,
        pattern,
        mask,
        mode=mode,
        alpha=0.2,
        mean=mean,
        std=std,
        crop_offsets=offsets,
        padding=4,
        flip=flip,
    )
    want = per_sample_oracle(images, poisoned, pattern, mask, mode, 0.2, mean, std, offsets, 4, flip)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_apply_trigger_accepts_index_and_leaves_clean_rows_untouched():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    pattern, mask = torch.full((3, 8, 8), 255.0), torch.zeros(1, 8, 8)
    mask[:, -2:, -2:] = 1
    mean, std = torch.zeros(3), torch.ones(3)
    out = apply_trigger(images, torch.tensor([1, 4]), pattern, mask, mean=mean, std=std)
    torch.testing.assert_close(out[[0, 2, 3, 5]], images[[0, 2, 3, 5]].float() / 255)
    assert (out[[1, 4]][:, :, -2:, -2:] == 1.0).all()
    torch.testing.assert_close(out[[1, 4]][:, :, :6, :6], images[[1, 4]][:, :, :6, :6].float() / 255)


def test_apply_trigger_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        apply_trigger(torch.zeros(1, 3, 8, 8), mean=torch.zeros(3), std=torch.ones(3))


@pytest.mark.parametrize("shape", [(7, 3), (4, 5, 3, 3), (1, 1, 28, 28)])
def test_channel_stats_match_definitions(shape):
    x = torch.randn(shape) * 3 + 1
    count, mean, m2, lo, hi = channel_stats(x)
    flat = x.transpose(0, 1).reshape(shape[1], -1).double()
    assert count.tolist() == [flat.shape[1]] * shape[1]
    torch.testing.assert_close(mean, flat.mean(1))
    torch.testing.assert_close(m2 / count, flat.var(1, unbiased=False))
    torch.testing.assert_close(lo, flat.min(1).values)
    torch.testing.assert_close(hi, flat.max(1).values)


def test_streaming_channel_stats_merge_equals_one_pass():
    parts = [torch.randn(n, 4, 3, 3) * (i + 1) + 1000 for i, n in enumerate((3, 1, 10))]
    acc = ChannelStats()
    for p in parts:
        acc.update(p)
    whole = torch.cat(parts)
    torch.testing.assert_close(acc.mean, whole.double().mean((0, 2, 3)))
    torch.testing.assert_close(acc.var, whole.double().var((0, 2, 3), unbiased=False))
    assert acc.count.tolist() == [whole.shape[0] * 9] * 4


def test_masked_conv2d_is_conv_times_mask_plus_masked_bias():
    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(5, 3, 3, 3), torch.randn(5)
    m, d, mb, db = torch.rand(5), torch.randn(5) * 0.1, torch.rand(5), torch.randn(5) * 0.1
    got = masked_conv2d(x, w, b, m, d, mb, db, 1, 1)
    want = F.conv2d(x, w * (m + d).view(-1, 1, 1, 1), b * (mb + db), 1, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
