"""GPU placement of grid units: pure functions of the worker index and the share, checked
without a GPU (local pool workers report their device; Ray packs logical GPUs)."""

from __future__ import annotations

import sys
import time

import pytest
from bd_cli.runner import LocalPool
from bd_cli.runner.placement import default_share, pool_size, share_for_peak, units_per_gpu, worker_device
from bd_cli.runner.worker import WorkerSetup
from bd_core.errors import InvalidRequest


def test_units_per_gpu_and_pool_size_follow_the_share():
    assert [units_per_gpu(s) for s in (1, 0.5, 0.34, 0.25, 0.2, 0.125, 0.01)] == [1, 2, 2, 4, 5, 8, 8]
    assert pool_size(8, 0.25) == 32 and pool_size(0, 0.5) == 2  # an explicit cuda:N: one GPU's worth
    for bad in (0, -0.5, 1.5, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="--gpu-share"):
            units_per_gpu(bad)


def test_workers_are_spread_round_robin_over_the_gpus():
    assert [worker_device("cuda", i, 4) for i in range(8)] == [f"cuda:{i % 4}" for i in range(8)]
    assert worker_device("cuda:2", 5, 4) == "cuda:2"  # an explicit GPU is kept
    assert worker_device("cpu", 3, 4) == "cpu" and worker_device("cuda", None, 4) == "cuda"


def test_default_share_leaves_headroom_and_needs_a_measurement():
    assert share_for_peak(900, 80_000) == 1 / 8  # tiny units: capped at 8 per GPU
    assert share_for_peak(12_000, 80_000) == 1 / 4  # 18 GB with headroom: 4 fit, 8 would not
    assert share_for_peak(30_000, 80_000) == 1 / 1  # 45 GB with headroom: alone
    share, why = default_share([None, 0], 80_000)
    assert share == 1 and "no peak" in why
    assert default_share([3000, 12_000, None], 80_000)[0] == 1 / 4  # the largest peak decides


def _device_of_worker(item: int, setup: WorkerSetup) -> str:
    from bd_cli.runner.worker import _prepare

    time.sleep(1.0)  # every worker of the pool takes one item
    return _prepare(setup)


def test_local_pool_pins_each_worker_to_one_gpu():
    setup = WorkerSetup(None, None, "cuda", {}, threads=1, gpus=2)
    devices = [device for _, device in LocalPool(4, gpus=2)(_device_of_worker, list(range(4)), setup)]
    assert sorted(devices) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


def _gpu_probe(item: int, setup: WorkerSetup) -> tuple[float, float, list]:
    import ray

    started = time.time()
    time.sleep(1.5)
    return started, time.time(), ray.get_gpu_ids()


def test_ray_packs_units_by_their_share_of_logical_gpus():
    ray = pytest.importorskip("ray")
    from bd_cli.runner import RayCluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the probe travels by value
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cluster = RayCluster(None, gpu_share=0.5)
        assert cluster.gpus() == 2
        spans = [r for _, r in cluster(_gpu_probe, list(range(4)), WorkerSetup(None, None, "cuda", {}, threads=1))]
        alone = [r for _, r in cluster(_gpu_probe, list(range(2)), WorkerSetup(None, None, "cuda", {}, 1), alone=True)]
    finally:
        ray.shutdown()
    latest_start, earliest_end = max(s for s, _, _ in spans), min(e for _, e, _ in spans)
    assert latest_start < earliest_end, "4 half-GPU units on 2 GPUs should all run at once"
    assert sorted(len(ids) for _, _, ids in spans) == [1] * 4
    assert sorted(ids[0] for _, _, ids in spans) == [0, 0, 1, 1]  # two per GPU
    assert sorted(ids[0] for _, _, ids in alone) == [0, 1]  # a unit retried alone takes a whole GPU
