"""Shared test setup: caches in a per-session temp dir, progress bars off, seeded torch, and
the shared attacked model trained in float64."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import pytest
import torch
from precision import float64


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("bd-cache")
    old = {k: os.environ.get(k) for k in ("BD_CACHE", "BD_PROGRESS")}
    os.environ["BD_CACHE"] = str(root)
    os.environ["BD_PROGRESS"] = "0"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class Backdoored(NamedTuple):
    spec: Any  # bd_core.attacked.AttackSpec
    attacked: Any  # bd_core.store.models.AttackedModel (trained in float64, now float32)
    cache_hit: bool  # False: trained by the fixture
    cache: Any  # the ModelCache it was stored in


TINY_PRESET = "tiny-test"


@pytest.fixture(scope="session")
def tiny_preset():
    """A recipe small enough for tests that still plants a reliable backdoor on synthetic data."""
    from bd_core.train import PRESETS, Recipe

    PRESETS[TINY_PRESET] = Recipe(epochs=5, batch_size=64, lr=0.05, width=0.125)
    yield TINY_PRESET
    PRESETS.pop(TINY_PRESET, None)


@pytest.fixture(scope="session")
def synthetic_data():
    from bd_core.attacked import DataBundle
    from bd_core.data import make_synthetic

    return DataBundle(
        make_synthetic("train", n_train=2000, size=28, channels=1),
        make_synthetic("test", n_test=300, size=28, channels=1),
    )


@pytest.fixture(scope="session")
def backdoored(synthetic_data, tiny_preset, tmp_path_factory):
    """BadNets on synthetic data, trained once per session. Trained in float64 (tests/precision.py),
    so that it is the same model, to ~1e-14, on every CPU and thread count; then turned to float32,
    in which the defenses under test run as they do for users."""
    from bd_core.attacked import AttackSpec, obtain_attacked_model
    from bd_core.store import ModelCache

    cache = ModelCache(tmp_path_factory.mktemp("models"))
    spec = AttackSpec("synthetic", "preact-resnet18", "badnets", 0.1, preset=tiny_preset)
    with float64():
        attacked, hit = obtain_attacked_model(spec, synthetic_data, cache)
    attacked.model.float()
    return Backdoored(spec, attacked, hit, cache)
