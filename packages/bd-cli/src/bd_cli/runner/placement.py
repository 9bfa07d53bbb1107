"""Where a grid's units run on GPUs: pure functions of the worker index and the GPU share, so that
placement is testable without a GPU.

A unit asks for a share of one GPU (1, 1/2, 1/4, ...): under Ray as `num_gpus=share` (Ray packs
tasks onto GPUs and sets CUDA_VISIBLE_DEVICES), in the local pool as `1/share` workers per visible
GPU, worker i pinned to GPU i % gpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bd_core.errors import InvalidRequest

MAX_UNITS_PER_GPU = 8
HEADROOM = 1.5  # a unit's peak varies with its mitigation set and the defense's stage


def check_share(share: float) -> float:
    if not 0 < share <= 1 or not math.isfinite(share):
        raise InvalidRequest(
            f"--gpu-share {share}: give the fraction of one GPU a unit takes, in (0, 1], "
            "e.g. 0.25 for four units side by side"
        )
    return share


def units_per_gpu(share: float) -> int:
    """How many units of this share fit on one GPU (1/share, rounded down; at most 8)."""
    return max(1, min(MAX_UNITS_PER_GPU, math.floor(1 / check_share(share) + 1e-9)))


def pool_size(gpus: int, share: float) -> int:
    """Local workers for `gpus` visible GPUs at this share."""
    return max(1, gpus) * units_per_gpu(share)


def worker_device(device: str, index: int | None, gpus: int) -> str:
    """The device of local worker `index`: a bare "cuda" is spread round-robin over the GPUs,
    so units 0..gpus-1 land on different GPUs first; an explicit cuda:N or cpu is kept."""
    if device != "cuda" or index is None or gpus < 1:
        return device
    return f"cuda:{index % gpus}"


def share_for_peak(peak_mb: float, device_mb: float) -> float:
    """The largest power-of-two fraction of a GPU of `device_mb` that holds a unit whose measured
    peak is `peak_mb`, with headroom: 1, 1/2, 1/4 or 1/8."""
    need = peak_mb * HEADROOM / device_mb
    fits = 1
    while fits < MAX_UNITS_PER_GPU and need * fits * 2 <= 1:
        fits *= 2
    return 1 / fits


def default_share(peaks_mb: Iterable[float], device_mb: float | None) -> tuple[float, str]:
    """(share, why): from the largest measured peak of the grid's arch and preset, or a whole GPU
    when nothing was measured on a GPU yet."""
    peaks = [p for p in peaks_mb if p and p > 0]
    if not peaks or not device_mb:
        return 1.0, "no peak GPU memory stored for these archs and presets: one unit per GPU (give --gpu-share)"
    peak = max(peaks)
    share = share_for_peak(peak, device_mb)
    return share, (
        f"largest stored peak {peak:.0f} MB x{HEADROOM} headroom on {device_mb:.0f} MB: "
        f"{units_per_gpu(share)} units per GPU"
    )
