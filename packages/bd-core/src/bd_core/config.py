"""Building frozen settings dataclasses from user overrides (`--set key=value`),
with type conversion and one clear error for unknown keys or bad values."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from bd_core.errors import InvalidRequest

T = TypeVar("T")


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


def build_dataclass(cls: type[T], overrides: dict[str, Any], what: str) -> T:
    """cls(**defaults | overrides); unknown keys list the valid ones; __post_init__ checks ranges."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        valid = ", ".join(f"{k}={f.default!r}" for k, f in fields.items()) or "(none)"
        raise InvalidRequest(f"{what} has no setting {', '.join(unknown)}; valid: {valid}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(v, hints.get(k, str), k, what) for k, v in overrides.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{what}: {e}") from None
