"""Where a grid's tasks run: a spawn-started process pool on this machine, or Ray tasks on a
cluster. Both yield `(item, result)` as tasks finish; a task whose worker was lost (its node
died, Ray's retries spent) yields `(item, Lost)` instead of taking the grid down with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from bd_core.errors import InvalidRequest
from bd_core.threads import cores, fixed_threads

from bd_cli.runner.placement import check_share, pool_size
from bd_cli.runner.worker import WorkerSetup, set_worker_index

# what Ray workers take from the driver's environment: bd's own switches, not its paths
SHARED_ENV = ("BD_PLUGINS", "BD_PROGRESS", "BD_PROGRESS_EVERY", "BD_WEAK_ASR", "PYTHONPATH")


@dataclass(frozen=True)
class Lost:
    """A task that never returned: its worker or node died."""

    reason: str


class LocalPool:
    """Tasks in a spawn-started process pool on this machine; workers share its files. On CUDA
    the pool runs `1/share` workers per GPU, worker i pinned to GPU i % gpus."""

    remote = False

    def __init__(self, workers: int, gpus: int = 0) -> None:
        self.workers, self.gpus = max(1, workers), gpus

    def share(self, value: Any) -> None:
        return None  # workers read the driver's own files

    def __call__(self, fn: Callable, items: list, setup: WorkerSetup, alone: bool = False) -> Iterable:
        """Yield (item, result) as tasks complete. When the consumer stops early (an error while
        storing a row, Ctrl-C, SIGTERM), tasks not yet started are cancelled and running ones
        stopped: a plain `with` would run every one of them first, for results nobody stores."""
        if not items:
            return
        context = get_context("spawn")
        counter = context.Value("i", 0)
        pool = ProcessPoolExecutor(
            max_workers=1 if alone else min(self.workers, len(items)),
            mp_context=context,
            initializer=set_worker_index,
            initargs=(counter,),
        )
        finished = False
        try:
            pending = {pool.submit(fn, item, setup): item for item in items}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = pending.pop(future)
                    try:
                        yield item, future.result()
                    except BrokenProcessPool as e:  # a worker was killed (OOM killer, SIGKILL)
                        yield item, Lost(f"worker process died: {e}")
            finished = True
        finally:
            if not finished:
                _stop_workers(pool)
            pool.shutdown(wait=True, cancel_futures=not finished)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's running tasks now. Their files are safe to cut off (models, kept tuning
    candidates and rows are all written whole or not at all); waiting would cost up to a whole
    unit (an hour for a tuned one on a CPU) for a result that is thrown away."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


class RayCluster:
    """Ray tasks on an existing cluster (`address`) or a local instance. Workers read nothing from
    the driver's filesystem: what they may need travels through Ray's object store (`share`)."""

    remote = True

    def __init__(self, address: str | None, gpu_share: float = 1.0) -> None:
        try:
            import ray
        except ImportError as e:
            raise InvalidRequest("--backend ray needs Ray: pip install 'ray>=2.60'") from e
        self.ray, self.address, self.gpu_share = ray, address, check_share(gpu_share)

    def _connect(self) -> Any:
        """Join the cluster (or start a local instance) on first use."""
        if not self.ray.is_initialized():
            env = {k: os.environ[k] for k in SHARED_ENV if k in os.environ}
            self.ray.init(
                address=self.address,
                runtime_env={"env_vars": env} if env else None,
                log_to_driver=False,
                include_dashboard=False,
            )
        return self.ray

    def gpus(self) -> float:
        return float(self._connect().cluster_resources().get("GPU", 0))

    def share(self, value: Any) -> Any:
        return self._connect().put(value)

    def __call__(self, fn: Callable, items: list, setup: WorkerSetup, alone: bool = False) -> Iterable:
        if not items:
            return
        ray = self._connect()
        gpus = (1 if alone else self.gpu_share) if setup.device.startswith("cuda") else 0
        task = ray.remote(num_cpus=max(1, setup.threads), num_gpus=gpus)(fn)
        pending = {task.remote(item, setup): item for item in items}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    item = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the task itself raised: a bug, not a lost node
                        raise e.as_instanceof_cause() from None
                    except ray.exceptions.RayError as e:  # its worker or node died, Ray's retries spent
                        result = Lost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    yield item, result
        finally:  # the consumer stopped early: the cluster need not run what nobody stores
            for ref in pending:
                ray.cancel(ref, force=True)


Runner = LocalPool | RayCluster


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a batch scheduler's stop) ends the grid the way Ctrl-C does:
    the pool is stopped, the rows already stored stay, and the command says how to resume.
    Only this process's handler changes (spawned workers start with the default one)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def choose_runner(
    backend: str, address: str | None, workers: int, device: str, gpu_share: float = 1.0
) -> tuple[Runner, int, str]:
    """(runner, torch threads per worker, device). Ray tasks take one thread each and run on the
    cluster's GPUs when it has some (device auto or cuda). The local pool runs one worker per
    core, or `1/gpu_share` per GPU on CUDA, unless told otherwise; its workers take the number of
    threads fixed by $BD_THREADS or OMP_NUM_THREADS, else 0: each its share of the cores among all
    live bd processes, so two grids side by side (or a grid and a `bd run`) do not oversubscribe them."""
    if backend == "ray":
        cluster = RayCluster(address, gpu_share)
        if device == "auto":
            device = "cuda" if cluster.gpus() else "cpu"
        if device.startswith("cuda") and not cluster.gpus():
            raise InvalidRequest(
                "--device cuda: the Ray cluster has no GPUs (ray start --num-gpus N on a GPU node); use --device cpu"
            )
        return cluster, 1, device
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    if not workers:
        workers = pool_size(gpus, gpu_share) if device.startswith("cuda") else cores()
    return LocalPool(workers, gpus), fixed_threads() or 0, device
