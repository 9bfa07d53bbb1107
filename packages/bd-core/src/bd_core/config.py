"""Building frozen settings dataclasses from user overrides (`--set key=value`),
with type conversion and one clear error for unknown keys or bad values.

A setting's valid range is declared on its field (`setting(0.01, above=0, high=10)`) and
checked by `check_settings`, once for every dataclass: every number must be finite and inside
its declared range, so a value that would make training diverge (`lr=inf`, `lr=1e30`) is
refused before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from bd_core.errors import InvalidRequest

T = TypeVar("T")
RANGE = "bd_range"  # the dataclass field metadata key of a declared range
# a setting added after results were stored, whose default is the behaviour those results had:
# left out of a result's key (and of "added since" notes) while it is at that default
NEUTRAL = "bd_neutral_default"


@dataclass(frozen=True)
class Range:
    """low <= value <= high; an open end excludes its bound; None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return "unbounded" if self.low is None else f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    """1000000 as 1000000 (not 1e+06), 1e-06 and 0.5 as they are."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e12 else f"{value:g}"


def setting(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
    neutral: bool = False,
) -> Any:
    """A dataclass field with `default` whose value must lie in [low, high]; `above`/`below` are
    exclusive bounds instead (`setting(0.01, above=0, high=10)`: a learning rate in (0, 10]).
    neutral: the default reproduces the method as it was before this setting existed, so results
    keep their keys while it is at that default (`keyed_settings`)."""
    if (low is not None and above is not None) or (high is not None and below is not None):
        raise ValueError("give each end of a range once: low or above, high or below")
    bounds = Range(
        low if above is None else above, high if below is None else below, above is not None, below is not None
    )
    return dataclasses.field(default=default, metadata={RANGE: bounds, NEUTRAL: neutral})


def option(default: str, neutral: bool = False) -> Any:
    """A dataclass field holding a word (its valid values are checked by the class)."""
    return dataclasses.field(default=default, metadata={NEUTRAL: neutral})


def keyed_settings(settings: Any) -> Any:
    """What identifies a run, as `dataclasses.asdict` gives it (nested dataclasses and tuples of
    them included), less the neutral settings left at their default."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return {
            f.name: keyed_settings(getattr(settings, f.name))
            for f in dataclasses.fields(settings)
            if not (f.metadata.get(NEUTRAL) and getattr(settings, f.name) == f.default)
        }
    if isinstance(settings, list | tuple):
        return type(settings)(keyed_settings(v) for v in settings)
    if isinstance(settings, dict):
        return {k: keyed_settings(v) for k, v in settings.items()}
    return settings


def neutral_settings(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(NEUTRAL)}


def declared_range(field: dataclasses.Field) -> Range | None:
    return field.metadata.get(RANGE)


def check_settings(settings: Any) -> None:
    """Raise ValueError naming the first setting of the dataclass `settings` that is not a finite
    number where numbers go, or lies outside its declared range. Booleans and strings pass."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if not math.isfinite(v):
                raise ValueError(f"{field.name} must be a finite number, got {v}")
            bounds = declared_range(field)
            if bounds is not None and v not in bounds:
                raise ValueError(f"{field.name} must be {_phrase(bounds)}, got {v:g}")


def _phrase(bounds: Range) -> str:
    text = str(bounds)
    return text if text[0] in "<>" else f"in {text}"


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _convert(value: Any, kind: Any, key: str, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float, str):
            return kind(value)
        origin = typing.get_origin(kind)
        if origin is tuple:
            inner = typing.get_args(kind)[0]
            return tuple(inner(v) for v in value.split(",") if v)
    except ValueError:
        raise InvalidRequest(f"{what}: {key} expects {getattr(kind, '__name__', kind)}, got {value!r}") from None
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A class's resolved annotations (resolving them costs ~0.6 ms; a grid builds 10^5 units)."""
    return typing.get_type_hints(cls)


def build_dataclass(cls: type[T], overrides: dict[str, Any], what: str) -> T:
    """cls(**defaults | overrides); unknown keys list the valid ones; __post_init__ checks ranges."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        valid = ", ".join(f"{k}={f.default!r}" for k, f in fields.items()) or "(none)"
        raise InvalidRequest(f"{what} has no setting {', '.join(unknown)}; valid: {valid}")
    hints = _type_hints(cls)
    kwargs = {k: _convert(v, hints.get(k, str), k, what) for k, v in overrides.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{what}: {e}") from None
