"""The compiled ops against their pure-torch twins (the oracle), opcheck, gradcheck, torch.compile."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from bd_kernels import ChannelStats, apply_trigger, channel_stats, masked_conv2d, reference
from bd_kernels import ops as kops
from kernel_cases import DEVICES, needs_extension

pytestmark = needs_extension

SHAPES = [(1, 3, 32, 32), (7, 1, 28, 28), (5, 3, 31, 29), (3, 3, 64, 64), (2, 1, 45, 33)]


def trigger_case(shape, mode, per_sample, mask_channels, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    poisoned = torch.rand(n, generator=g) < 0.5
    poisoned[0] = True
    pattern = torch.rand((n, c, h, w) if per_sample else (c, h, w), generator=g) * 255
    if mode == "add":
        pattern = pattern - 127.5
    mc = c if mask_channels == "C" else 1
    mask = torch.rand((n, mc, h, w) if per_sample else (mc, h, w), generator=g)
    mean, std = torch.rand(c, generator=g) * 0.5 + 0.2, torch.rand(c, generator=g) * 0.2 + 0.2
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    to = lambda t: t.to(device)  # noqa: E731
    return [to(t) for t in (images, poisoned, pattern, mask, mean, std, offsets, flip)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "mode, per_sample, mask_channels",
    [
        ("replace", False, "1"),
        ("blend", False, "C"),
        ("add", True, "1"),
        ("replace", True, "C"),
        ("blend", True, "1"),
    ],
)
def test_apply_trigger_matches_reference(device, shape, mode, per_sample, mask_channels):
    images, poisoned, pattern, mask, mean, std, offsets, flip = trigger_case(
        shape, mode, per_sample, mask_channels, device
    )
    for crop, fl in itertools.product([None, offsets], [None, flip]):
        got = apply_trigger(
            images,
            poisoned,
            pattern,
            mask,
            mode=mode,
            alpha=0.2,
            mean=mean,
            std=std,
            crop_offsets=crop,
            padding=4,
            flip=fl,
        )
        want = reference.apply_trigger(images, poisoned, pattern, mask, mode, 0.2, mean, std, crop, 4, fl)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_apply_trigger_dtypes_and_layouts(device, dtype, channels_last):
    images, poisoned, pattern, mask, mean, std, offsets, flip = trigger_case(
        (4, 3, 32, 32), "blend", False, "1", device
    )
    images = images.contiguous(memory_format=torch.channels_last)[:, :, :, :]  # a channels_last (non-NCHW) input
    got = apply_trigger(
        images,
        poisoned,
        pattern,
        mask,
        mode="blend",
        alpha=0.3,
        mean=mean,
        std=std,
        crop_offsets=offsets,
        padding=4,
        flip=flip,
        out_dtype=dtype,
        channels_last=channels_last,
    )
    assert got.dtype == dtype and got.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    want = reference.apply_trigger(images, poisoned, pattern, mask, "blend", 0.3, mean, std, offsets, 4, flip)
    tol = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_apply_trigger_non_contiguous_input_and_index_rows(device):
    base = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, device=device)
    images = base[:, :, 4:36, 8:40]  # a strided view
    pattern, mask = torch.full((3, 32, 32), 255.0, device=device), torch.zeros(1, 32, 32, device=device)
    mask[:, -3:, -3:] = 1
    mean, std = torch.zeros(3, device=device), torch.ones(3, device=device)
    got = apply_trigger(images, torch.tensor([0, 5], device=device), pattern, mask, mean=mean, std=std)
    want = reference.apply_trigger(
        images.contiguous(),
        torch.tensor([1, 0, 0, 0, 0, 1], dtype=torch.bool, device=device),
        pattern,
        mask,
        "replace",
        1.0,
        mean,
        std,
    )
    torch.testing.assert_close(got, want)


def test_apply_trigger_validates_arguments():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    mean, std = torch.zeros(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="crop offsets must lie in"):
        apply_trigger(images, mean=mean, std=std, crop_offsets=torch.full((2, 2), 9), padding=4)
    with pytest.raises(RuntimeError, match="pattern must be"):
        apply_trigger(images, torch.ones(2, dtype=torch.bool), torch.zeros(3, 4, 4), mean=mean, std=std)
    with pytest.raises(ValueError, match="mode must be one of"):
        apply_trigger(images, mean=mean, std=std, mode="paint")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(256, 64), (3, 5, 7, 9), (1, 1, 28, 28), (8, 512, 4, 4), (2, 3, 1, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_channel_stats_matches_reference(device, shape, layout, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 2).to(dtype).to(device)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=0)[::2]
    got = channel_stats(x)
    want = reference.channel_stats(x)
    assert torch.equal(got[0].cpu(), want[0].cpu())
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g.cpu(), w.cpu(), atol=1e-9, rtol=1e-9)


def test_channel_stats_numerically_stable_for_large_offsets():
    x = torch.randn(64, 4, 16, 16, dtype=torch.float64) * 1e-3 + 1e6
    _, mean, m2, _, _ = channel_stats(x)
    flat = x.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(m2 / flat.shape[1], flat.var(1, unbiased=False), rtol=1e-6, atol=0)
    torch.testing.assert_close(mean, flat.mean(1), rtol=1e-12, atol=0)


def test_streaming_accumulator_over_compiled_batches():
    parts = [torch.randn(n, 8, 4, 4) + i for i, n in enumerate((5, 1, 17))]
    acc = ChannelStats()
    for p in parts:
        acc.update(p)
    whole = torch.cat(parts).double()
    torch.testing.assert_close(acc.var, whole.var((0, 2, 3), unbiased=False))
    torch.testing.assert_close(acc.min, whole.amin((0, 2, 3)))
    assert acc.batches == 3


def conv_case(device, dtype, n=2, cin=4, cout=6, size=9, groups=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    x, w, b = mk(n, cin, size, size), mk(cout, cin // groups, 3, 3), mk(cout)
    m, d, mb, db = mk(cout).abs(), mk(cout) * 0.1, mk(cout).abs(), mk(cout) * 0.1
    return [t.requires_grad_() for t in (x, w, b, m, d, mb, db)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "stride, padding, groups, channels_last", [(1, 1, 1, False), (2, 0, 2, False), (1, 1, 1, True)]
)
def test_masked_conv2d_forward_backward_match_reference(device, stride, padding, groups, channels_last):
    args = conv_case(device, torch.float32, groups=groups)
    if channels_last:
        args[0] = args[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = masked_conv2d(*args, stride, padding, 1, groups)
    ref_args = [a.detach().clone().requires_grad_() for a in args]
    y_ref = reference.masked_conv2d(*ref_args, stride, padding, 1, groups)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, args, gy)
    grads_ref = torch.autograd.grad(y_ref, ref_args, gy)
    for name, g, r in zip("x w b m d mb db".split(), grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=name)


def test_masked_conv2d_gradcheck_float64():
    args = conv_case("cpu", torch.float64, n=2, cin=2, cout=3, size=5)
    assert torch.autograd.gradcheck(lambda *a: masked_conv2d(*a, 1, 1), args, eps=1e-6, atol=1e-5)


def test_masked_conv2d_without_bias_and_frozen_weights():
    x, w, _, m, d, mb, db = conv_case("cpu", torch.float32)
    w = w.detach()
    y = masked_conv2d(x, w, None, m, d, mb, db, 1, 1)
    y.sum().backward()
    want = F.conv2d(x.detach(), w * (m + d).detach().view(-1, 1, 1, 1), None, 1, 1)
    torch.testing.assert_close(y.detach(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.grad, d.grad)  # both receive d loss / d scale
    assert mb.grad is None or torch.count_nonzero(mb.grad) == 0


def opcheck_samples(device):
    """Several inputs per op: trigger modes, per-sample and shared patterns, odd sizes, float and
    half outputs, contiguous and channels_last maps."""
    samples = []
    for shape, mode, per_sample, mc, dtype, cl in [
        ((3, 3, 16, 16), "blend", False, "1", torch.float32, False),
        ((2, 1, 28, 28), "replace", True, "1", torch.float32, True),
        ((4, 3, 13, 17), "add", False, "C", torch.bfloat16, False),
    ]:
        images, poisoned, pattern, mask, mean, std, offsets, flip = trigger_case(shape, mode, per_sample, mc, device)
        samples.append(
            (
                torch.ops.bd_kernels.apply_trigger.default,
                (images, poisoned, pattern, mask, mode, 0.2, mean, std, offsets, 4, flip, dtype, cl),
            )
        )
    g = torch.Generator().manual_seed(0)
    for shape in [(4, 3, 5, 5), (1, 7, 1, 9), (6, 1, 11, 3)]:
        samples.append((torch.ops.bd_kernels.channel_stats.default, (torch.randn(shape, generator=g).to(device),)))
    for n, c, size, cl in [(2, 6, 9, False), (2, 6, 9, True), (1, 3, 4, False)]:
        z = torch.randn(n, c, size, size, generator=g).to(device)
        z = z.contiguous(memory_format=torch.channels_last) if cl else z
        scale, shift = torch.rand(c, generator=g).to(device), torch.randn(c, generator=g).to(device)
        samples.append(
            (
                torch.ops.bd_kernels.masked_conv2d_epilogue.default,
                (z.requires_grad_(), scale.requires_grad_(), shift.requires_grad_()),
            )
        )
        samples.append(
            (
                torch.ops.bd_kernels.masked_conv2d_epilogue_backward.default,
                (torch.randn(z.shape, generator=g).to(device), z.detach(), scale.detach()),
            )
        )
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    """torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch) on every
    op, on every device the extension was built for, with several samples each."""
    samples = opcheck_samples(device)
    assert {op for op, _ in samples} == {
        getattr(torch.ops.bd_kernels, name).default
        for name in ("apply_trigger", "channel_stats", "masked_conv2d_epilogue", "masked_conv2d_epilogue_backward")
    }
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_ops_work_under_torch_compile():
    images, poisoned, pattern, mask, mean, std, offsets, flip = trigger_case(
        (4, 3, 16, 16), "replace", False, "1", "cpu"
    )
    x, w, b, m, d, mb, db = conv_case("cpu", torch.float32, cin=3, size=16)

    def step(images, w, m):
        inp = apply_trigger(
            images, poisoned, pattern, mask, mean=mean, std=std, crop_offsets=offsets, padding=4, flip=flip
        )
        y = masked_conv2d(inp, w, b, m, d, mb, db, 1, 1)
        return y.square().mean()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(images, w, m)
    loss.backward()
    w_ref, m_ref = w.detach().clone().requires_grad_(), m.detach().clone().requires_grad_()
    loss_ref = step(images, w_ref, m_ref)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(m.grad, m_ref.grad)


def test_reference_fallback_when_extension_absent(monkeypatch):
    monkeypatch.setattr(kops, "_BUILD", {})
    monkeypatch.setattr(kops, "_warned", False)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="extension is not built"):
        out = apply_trigger(images, mean=torch.zeros(3), std=torch.ones(3), channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, images.float() / 255)


@pytest.mark.skipif(not torch.cuda.is_available() or not kops.build_info().get("cuda"), reason="needs a CUDA build")
@pytest.mark.parametrize("path", kops.MASKED_CONV_PATHS)
def test_cuda_ops_never_synchronise_with_the_host(path):
    """Every op, with every optional input and the index form of `poisoned`, queued without a
    host synchronisation (which would stall a GPU grid at each call)."""
    images, poisoned, pattern, mask, mean, std, offsets, flip = trigger_case((6, 3, 32, 32), "blend", True, "C", "cuda")
    rows = torch.nonzero(poisoned).flatten()  # computed before the check: nonzero itself syncs
    conv = conv_case("cuda", torch.float32)
    kwargs = dict(mode="blend", alpha=0.3, mean=mean, std=std, crop_offsets=offsets, padding=4, flip=flip)

    def run_all():
        apply_trigger(images, poisoned, pattern, mask, **kwargs)
        apply_trigger(images, rows, pattern, mask, **kwargs, channels_last=True)
        channel_stats(torch.randn(8, 16, 5, 5, device="cuda"))
        y = masked_conv2d(*conv, 1, 1, path=path)
        y.backward(torch.ones_like(y))

    run_all()  # first calls: kernels loaded, cuDNN plans chosen
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_all()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
