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
