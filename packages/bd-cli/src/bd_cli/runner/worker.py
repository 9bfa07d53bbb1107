"""What runs in a grid's worker: a process of the local pool, or a Ray task on any node.

A local worker shares the driver's machine, so it reads the driver's model cache and data
folder. A Ray worker reads nothing from the driver's filesystem: it loads the dataset from its
own node's data folder (or takes the copy the driver shipped through Ray's object store when
the node has none, or other images), keeps attacked models in its own node's cache, and fetches
a model's bytes from the object store only when its node's cache lacks them. Only the driver
writes the results store.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bd_core.attacked import AttackSpec, DataBundle, load_data, obtain_attacked_model
from bd_core.errors import BdError
from bd_core.paths import cache_root
from bd_core.progress import labelled
from bd_core.store import ModelCache
from bd_core.threads import share_cores
from bd_core.train import PRESETS, Recipe

from bd_cli.runner.experiment import ExperimentSpec, execute
from bd_cli.runner.placement import worker_device


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a fresh worker process needs besides its unit."""

    cache_dir: str | None  # the driver's model cache (local pool); None: the node's own (Ray)
    data_dir: str | None  # None: the node's own data folder ($BD_DATA, then Debian's)
    device: str
    presets: dict[str, dict[str, Any]]
    threads: int = 0
    gpus: int = 0  # local pool on CUDA: GPUs its workers are spread over (worker i on GPU i % gpus)


@dataclass(frozen=True)
class Parcel:
    """What a Ray worker may fetch from the driver when its node lacks it: handles into Ray's
    object store (None in the local pool, whose workers read the driver's files). Refs nested in
    a dataclass are not resolved by Ray before the task starts, so nothing moves unless asked."""

    data: Any = None  # ObjectRef of the driver's DataBundle
    model: Any = None  # ObjectRef of the attacked model file's bytes


@dataclass(frozen=True)
class AttackTask:
    spec: AttackSpec
    parcel: Parcel = field(default_factory=Parcel)


@dataclass(frozen=True)
class DefenseTask:
    spec: ExperimentSpec
    parcel: Parcel = field(default_factory=Parcel)


_worker_index: int | None = None


def set_worker_index(counter: Any) -> None:
    """Pool initializer: take the next worker index from a shared counter (for GPU placement)."""
    global _worker_index
    with counter.get_lock():
        _worker_index = counter.value
        counter.value += 1


def _prepare(setup: WorkerSetup) -> str:
    """Set up this process for a unit; returns the device it computes on."""
    import torch

    from bd_cli import quiet_library_warnings

    quiet_library_warnings()
    if setup.threads:
        torch.set_num_threads(setup.threads)
    else:  # its share of the cores among every live bd process (other grids, `bd run`s), kept between epochs
        share_cores()
    for name, recipe in setup.presets.items():
        PRESETS.setdefault(name, Recipe(**recipe))
    return worker_device(setup.device, _worker_index, setup.gpus)


def _cache(setup: WorkerSetup) -> ModelCache:
    return ModelCache(Path(setup.cache_dir) if setup.cache_dir else cache_root() / "models")


@lru_cache(maxsize=4)
def _node_data(dataset: str, data_dir: str | None) -> DataBundle | None:
    try:
        return load_data(dataset, Path(data_dir) if data_dir else None)
    except BdError:  # not on this node: the driver's copy is used
        return None


@lru_cache(maxsize=4)
def _shipped(ref: Any) -> DataBundle:
    import ray

    return ray.get(ref)


def unit_data(dataset: str, fingerprint: str | None, setup: WorkerSetup, parcel: Parcel) -> DataBundle:
    """The unit's dataset: this node's copy when it holds the same images, else the driver's."""
    bundle = _node_data(dataset, setup.data_dir)
    if bundle is not None and (fingerprint is None or bundle.fingerprint == fingerprint):
        return bundle
    if parcel.data is None:
        if bundle is None:
            load_data(dataset, Path(setup.data_dir) if setup.data_dir else None)  # raises the loader's own error
        raise BdError(
            f"{dataset} in this worker's data folder differs from the driver's "
            f"(fingerprint {bundle.fingerprint}, expected {fingerprint})"
        )
    return _shipped(parcel.data)


def where(setup: WorkerSetup, device: str) -> dict[str, str]:
    """Which node, process and cache ran a unit (kept in the row's details)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "cache": str(_cache(setup).root), "device": device}


def train_attack_unit(task: AttackTask, setup: WorkerSetup) -> tuple[str, str | None, bytes | None]:
    """Phase 1: train (or find) one attacked model. Returns (key, error or None, the model file's
    bytes when the worker's cache is not the driver's, so that the driver can keep it)."""
    device = _prepare(setup)
    spec = task.spec
    try:
        cache = _cache(setup)
        with labelled(f"{spec.attack} on {spec.arch}"):
            obtain_attacked_model(spec, unit_data(spec.dataset, spec.data, setup, task.parcel), cache, device)
        blob = None if setup.cache_dir else cache.path(spec.key).read_bytes()
        return spec.key, None, blob
    except Exception as e:  # recorded against every unit that needed this model
        return spec.key, f"attack training failed: {type(e).__name__}: {e}", None


def unit_label(spec: ExperimentSpec) -> str:
    """How a unit's progress lines are told apart in a grid's log, where workers interleave."""
    a = spec.attack
    return f"{a.attack} on {a.arch}, {spec.defense}, spc {spec.spc}, partition {spec.partition}"


def defense_unit(task: DefenseTask, setup: WorkerSetup) -> dict[str, Any]:
    """Phase 2: one defense unit -> its result row (never raises)."""
    spec = task.spec
    try:
        device = _prepare(setup)
        cache = _cache(setup)
        if task.parcel.model is not None and cache.get_path(spec.attack.key) is None:
            import ray

            cache.put_bytes(spec.attack.key, ray.get(task.parcel.model))  # once per node
        with labelled(unit_label(spec)):
            row = execute(spec, unit_data(spec.attack.dataset, spec.attack.data, setup, task.parcel), cache, device)
        if "details" in row:
            row["details"]["worker"] = where(setup, device)
        return row
    except Exception as e:
        return {**spec.columns(), "config": spec.config(), "status": "failed", "error": f"{type(e).__name__}: {e}"}
