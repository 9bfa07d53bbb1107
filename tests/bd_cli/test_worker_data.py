"""A grid worker's dataset: its node's own copy when it holds the driver's images, else the copy
the driver shipped through Ray, never a path of the driver's."""

from __future__ import annotations

import numpy as np
import pytest
from bd_cli.runner.worker import Parcel, WorkerSetup, unit_data
from bd_core.attacked import load_data
from bd_core.errors import BdError
from formats_writers import write_fashion_mnist


def test_a_node_without_the_drivers_images_uses_the_shipped_copy(tmp_path):
    ray = pytest.importorskip("ray")
    write_fashion_mnist(tmp_path / "driver" / "fashion-mnist", 40, 20, True, np.random.default_rng(0))
    write_fashion_mnist(tmp_path / "other" / "fashion-mnist", 40, 20, True, np.random.default_rng(1))
    (tmp_path / "empty").mkdir()
    drivers = load_data("fashion-mnist", tmp_path / "driver")

    def setup(folder: str) -> WorkerSetup:
        return WorkerSetup(None, str(tmp_path / folder), "cpu", {})

    same = unit_data("fashion-mnist", drivers.fingerprint, setup("driver"), Parcel())  # nothing shipped
    assert same.fingerprint == drivers.fingerprint
    with pytest.raises(BdError, match="differs from the driver's"):
        unit_data("fashion-mnist", drivers.fingerprint, setup("other"), Parcel())
    with pytest.raises(BdError, match="fashion-mnist"):  # the loader's own message: not found
        unit_data("fashion-mnist", drivers.fingerprint, setup("empty"), Parcel())
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        parcel = Parcel(data=ray.put(drivers))
        for folder in ("other", "empty"):
            got = unit_data("fashion-mnist", drivers.fingerprint, setup(folder), parcel)
            assert got.fingerprint == drivers.fingerprint
    finally:
        ray.shutdown()
