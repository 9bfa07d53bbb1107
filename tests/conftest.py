"""Shared test setup: caches in a per-session temp dir, progress bars off, seeded torch."""

from __future__ import annotations

import os

import pytest
import torch


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


TINY_PRESET = "tiny-test"


@pytest.fixture(scope="session")
def tiny_preset():
    """A recipe small enough for tests that still plants a reliable backdoor on synthetic data."""
    from bd_core.train import PRESETS, Recipe

    PRESETS[TINY_PRESET] = Recipe(epochs=12, batch_size=64, lr=0.05, width=0.125)
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
    """(spec, attacked model, cache hit) of BadNets on synthetic data, trained once per session.

    Twelve epochs on 2 000 tiny images plant the backdoor for most seeds, but training this small
    is chaotic: another CPU's rounding acts like another seed, and seed 0 on one thread reached
    ASR 0.83 where two threads reach 1.0. The tests below assume a backdoor that took, so the
    fixture takes the first of seeds 0-2 whose model has ASR >= 0.95 (docs/decisions.md)."""
    from bd_core.attacked import AttackSpec, obtain_attacked_model
    from bd_core.store import ModelCache

    cache = ModelCache(tmp_path_factory.mktemp("models"))
    for seed in (0, 1, 2):
        spec = AttackSpec("synthetic", "preact-resnet18", "badnets", 0.1, seed=seed, preset=tiny_preset)
        attacked, hit = obtain_attacked_model(spec, synthetic_data, cache)
        if attacked.meta["metrics"]["asr"] >= 0.95:
            break
    return spec, attacked, hit, cache
