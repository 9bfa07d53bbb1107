"""Settings ranges declared on dataclass fields, checked by one function."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from bd_core.config import Range, build_dataclass, check_settings, setting
from bd_core.errors import InvalidRequest


@dataclass(frozen=True)
class Knobs:
    lr: float = setting(0.01, above=0, high=1)
    momentum: float = setting(0.9, 0, below=1)
    epochs: int = setting(10, 1, 1_000_000)
    sizes: tuple[float, ...] = setting((1.0, 2.0), 0, 10)
    name: str = "free"
    unbounded: float = 3.0  # no declared range: only finiteness is checked

    def __post_init__(self) -> None:
        check_settings(self)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": "inf"}, "lr must be a finite number, got inf"),
        ({"lr": "nan"}, "lr must be a finite number, got nan"),
        ({"lr": "1e30"}, "lr must be in (0, 1], got 1e+30"),
        ({"lr": "0"}, "lr must be in (0, 1], got 0"),
        ({"momentum": "1"}, "momentum must be in [0, 1), got 1"),
        ({"epochs": "0"}, "epochs must be in [1, 1000000], got 0"),
        ({"sizes": "1,11"}, "sizes must be in [0, 10], got 11"),
        ({"unbounded": "-inf"}, "unbounded must be a finite number, got -inf"),
    ],
)
def test_out_of_range_or_non_finite_settings_are_one_clear_error(overrides, message):
    with pytest.raises(InvalidRequest) as e:
        build_dataclass(Knobs, overrides, what="knobs")
    assert str(e.value) == f"knobs: {message}"


def test_values_at_the_closed_ends_pass_and_ranges_read_as_intervals():
    knobs = build_dataclass(Knobs, {"lr": "1", "momentum": "0", "epochs": "1", "unbounded": "-1e300"}, what="k")
    assert (knobs.lr, knobs.momentum, knobs.epochs) == (1.0, 0.0, 1)
    assert [
        str(r)
        for r in (
            Range(0, 1, True),
            Range(0, 1, False, True),
            Range(1, 1_000_000),
            Range(0, None, True),
            Range(None, 5),
            Range(1e-6, 0.5),
        )
    ] == ["(0, 1]", "[0, 1)", "[1, 1000000]", "> 0", "<= 5", "[1e-06, 0.5]"]


def test_every_defense_declares_ranges_that_hold_its_own_defaults():
    from bd_defenses import DEFENSES, create_defense, describe

    for name in DEFENSES:
        create_defense(name)  # the defaults pass their own ranges
        ranges = describe(name)["ranges"]
        assert not {"lr", "epochs", "batch_size"} & set(describe(name)["hyperparameters"]) - set(ranges), name
