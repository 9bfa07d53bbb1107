"""bd_kernels micro-benchmarks: every compiled op against its baseline in the same run.

Groups: apply_trigger (reference = baseline), channel_stats (torch's separate
mean/var/amin/amax = baseline), masked_conv2d forward+backward on PreAct-ResNet18's conv
layers, against eager conv * mask + bias and against the plain convolution the masking
defenses start from (both baselines; the plain one sets the 10 % overhead budget). Memory-bound
ops report GB/s next to the machine's copy bandwidth, measured here too. On a GPU the same file runs on cuda.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import bd_kernels
import pytest
import torch
from bd_kernels import apply_trigger, channel_stats, masked_conv2d, reference

DEVICE = "cuda" if torch.cuda.is_available() and bd_kernels.build_info().get("cuda") else "cpu"
pytestmark = pytest.mark.skipif(not bd_kernels.has_extension(), reason="compiled extension not built")


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def run(benchmark, fn, rounds: int, bytes_moved: int | None = None):
    def timed():
        out = fn()
        sync()
        return out

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=2)
    benchmark.extra_info["device"] = DEVICE
    if bytes_moved:
        benchmark.extra_info["GB/s"] = round(bytes_moved / benchmark.stats.stats.median / 1e9, 1)


@pytest.fixture(scope="module")
def copy_bandwidth():
    x = torch.empty(64 * 2**20, dtype=torch.float32, device=DEVICE)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    import time

    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync()
    return 2 * x.numel() * 4 * 10 / (time.perf_counter() - t) / 1e9


# ------------------------------------------------------------------ apply_trigger


def trigger_batch():
    g = torch.Generator().manual_seed(0)
    n, c, s = 256, 3, 32
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)
    poisoned = torch.rand(n, generator=g) < 0.1
    pattern = torch.full((c, s, s), 255.0)
    mask = torch.zeros(1, s, s)
    mask[:, -3:, -3:] = 1
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    tensors = [t.to(DEVICE) for t in (images, poisoned, pattern, mask, mean, std, offsets, flip)]
    return tensors, n * c * s * s * (1 + 4)  # read uint8, write float32


@pytest.mark.benchmark(group="apply_trigger 256x3x32x32")
def test_apply_trigger_compiled(benchmark, copy_bandwidth):
    (images, poisoned, pattern, mask, mean, std, offsets, flip), nbytes = trigger_batch()
    run(
        benchmark,
        lambda: apply_trigger(
            images, poisoned, pattern, mask, mean=mean, std=std, crop_offsets=offsets, padding=4, flip=flip
        ),
        50,
        nbytes,
    )
    benchmark.extra_info["copy GB/s"] = round(copy_bandwidth, 1)


@pytest.mark.benchmark(group="apply_trigger 256x3x32x32")
def test_apply_trigger_reference_baseline(benchmark):
    (images, poisoned, pattern, mask, mean, std, offsets, flip), nbytes = trigger_batch()
    run(
        benchmark,
        lambda: reference.apply_trigger(images, poisoned, pattern, mask, "replace", 1.0, mean, std, offsets, 4, flip),
        50,
        nbytes,
    )


# ------------------------------------------------------------------ channel_stats

STATS_SHAPES = {"256x64x32x32": (256, 64, 32, 32), "256x512x4x4": (256, 512, 4, 4)}


def separate_stats(x):
    dims = (0, 2, 3)
    return x.mean(dims), x.var(dims, unbiased=False), x.amin(dims), x.amax(dims)


@pytest.mark.parametrize("name", list(STATS_SHAPES))
def test_channel_stats_compiled(benchmark, name, copy_bandwidth):
    benchmark.group = f"channel_stats {name}"
    x = torch.randn(STATS_SHAPES[name], device=DEVICE)
    run(benchmark, lambda: channel_stats(x), 20, x.numel() * 4)
    benchmark.extra_info["copy GB/s"] = round(copy_bandwidth, 1)


@pytest.mark.parametrize("name", list(STATS_SHAPES))
def test_channel_stats_torch_separate_baseline(benchmark, name):
    benchmark.group = f"channel_stats {name}"
    x = torch.randn(STATS_SHAPES[name], device=DEVICE)
    run(benchmark, lambda: separate_stats(x), 20, x.numel() * 4)


# ------------------------------------------------------------------ masked_conv2d

# PreAct-ResNet18's 3x3 conv layers on 32 px inputs (channels, spatial size); batch 32 on CPU, 256 on GPU
LAYERS = {"64@32": (64, 32), "128@16": (128, 16), "256@8": (256, 8), "512@4": (512, 4)}
BATCH = 256 if DEVICE == "cuda" else 32


def conv_inputs(channels: int, size: int, train_weights: bool):
    x = torch.randn(BATCH, channels, size, size, device=DEVICE, requires_grad=True)
    w = torch.randn(channels, channels, 3, 3, device=DEVICE, requires_grad=train_weights)
    b = torch.randn(channels, device=DEVICE)
    masks = [torch.ones(channels, device=DEVICE, requires_grad=True) for _ in range(2)]
    perturb = [torch.zeros(channels, device=DEVICE, requires_grad=True) for _ in range(2)]
    return x, w, b, masks[0], perturb[0], masks[1], perturb[1]


def fwd_bwd(fn, args):
    grad = torch.ones(BATCH, args[0].shape[1], args[0].shape[2], args[0].shape[3], device=DEVICE)

    def step():
        for a in args:
            a.grad = None
        fn(*args, 1, 1).backward(grad)

    return step


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("weights", ["frozen", "trained"])
def test_masked_conv2d_compiled(benchmark, layer, weights):
    benchmark.group = f"masked_conv2d fwd+bwd {layer} weights {weights}"
    epilogue = functools.partial(masked_conv2d, path="epilogue")
    run(benchmark, fwd_bwd(epilogue, conv_inputs(*LAYERS[layer], weights == "trained")), 15)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("weights", ["frozen", "trained"])
def test_masked_conv2d_folded(benchmark, layer, weights):
    """The third path: the mask folded into the weight (one convolution, but the weight gradient
    is needed for the mask's even when the weights are frozen)."""
    benchmark.group = f"masked_conv2d fwd+bwd {layer} weights {weights}"
    run(benchmark, fwd_bwd(reference.masked_conv2d_folded, conv_inputs(*LAYERS[layer], weights == "trained")), 15)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("weights", ["frozen", "trained"])
def test_masked_conv2d_eager_baseline(benchmark, layer, weights):
    benchmark.group = f"masked_conv2d fwd+bwd {layer} weights {weights}"
    run(benchmark, fwd_bwd(reference.masked_conv2d, conv_inputs(*LAYERS[layer], weights == "trained")), 15)


def plain_conv(x, w, b, *_masks_and_layout):
    """The layer a masking defense starts from: convolution plus bias, nothing else."""
    return torch.nn.functional.conv2d(x, w, b, 1, 1)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("weights", ["frozen", "trained"])
def test_plain_conv_baseline(benchmark, layer, weights):
    """What a masked layer must cost at most 10 % more than (issue 18): the plain convolution."""
    benchmark.group = f"masked_conv2d fwd+bwd {layer} weights {weights}"
    run(benchmark, fwd_bwd(plain_conv, conv_inputs(*LAYERS[layer], weights == "trained")), 15)


PEAK = textwrap.dedent(
    """
    import resource, sys, torch
    from bd_kernels import masked_conv2d, reference
    fn = masked_conv2d if sys.argv[1] == "compiled" else reference.masked_conv2d
    c, s, n = 64, 32, 64
    x = torch.randn(n, c, s, s, requires_grad=True); w = torch.randn(c, c, 3, 3)
    b = torch.randn(c); m, d = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    mb, db = torch.ones(c), torch.zeros(c)
    g = torch.ones(n, c, s, s)
    fn(x[:1], w, b, m, d, mb, db, 1, 1).sum().backward()   # warm up allocators and oneDNN
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(x, w, b, m, d, mb, db, 1, 1).backward(g)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """
)


@pytest.mark.skipif(DEVICE != "cpu", reason="peak RSS is a CPU measure; on GPU see max_memory_allocated")
def test_masked_conv2d_peak_memory():
    """Growth of peak RSS during one fwd+bwd of a 64x64x32x32 layer (batch 64, 16 MB activations)."""
    peaks = {}
    for variant in ("compiled", "eager"):
        out = subprocess.run([sys.executable, "-c", PEAK, variant], capture_output=True, text=True, check=True)
        peaks[variant] = float(out.stdout.strip().splitlines()[-1])
    print(f"\npeak RSS growth, MB: compiled {peaks['compiled']:.0f}, eager {peaks['eager']:.0f}")
