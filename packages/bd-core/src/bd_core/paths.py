"""Where bd reads data from and writes caches to (overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """Root that holds datasets: $BD_DATA, else ~/.cache/bd/data."""
    return Path(os.environ.get("BD_DATA", Path.home() / ".cache" / "bd" / "data")).expanduser()


def cache_root() -> Path:
    """Root of bd's caches (decoded datasets, attacked models): $BD_CACHE, else ~/.cache/bd."""
    return Path(os.environ.get("BD_CACHE", Path.home() / ".cache" / "bd")).expanduser()
