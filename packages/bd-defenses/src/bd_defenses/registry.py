"""Defense registry: `@register` on a frozen dataclass; lookup by the names users type."""

from __future__ import annotations

import dataclasses
from typing import Any

from bd_core.config import build_dataclass
from bd_core.errors import BdError
from bd_core.registry import Registry

from bd_defenses.base import Defense
from bd_defenses.combined import SEPARATOR, Combined

DEFENSES: Registry[type[Defense]] = Registry("defense", hint=" (or several joined by '+', e.g. bnp+ft)",
                                             sort_valid=True)


def register(
    name: str, family: str, paper: str, aliases: tuple[str, ...] = (), needs: str = "", benchmarked: bool = True
):
    """Register a defense class; `benchmarked=False` marks the four the survey reviewed but did
    not run (MESA, BAERASER, BCU, UNIT): `--defense all` in a grid leaves them out."""

    def wrap(cls: type[Defense]) -> type[Defense]:
        cls.name, cls.family, cls.paper, cls.needs, cls.benchmarked = name, family, paper, needs, benchmarked
        DEFENSES.add(name, cls, aliases)
        return cls

    return wrap


def benchmarked_defenses() -> list[str]:
    return [n for n, cls in DEFENSES.items() if cls.benchmarked]


def canonical_defense(name: str) -> str:
    """The registered name of `name` (aliases, case and dashes ignored); a combination such as
    'BNP + ft' becomes 'bnp+ft'."""
    if SEPARATOR not in name:
        return DEFENSES.canonical(name)
    parts = [p.strip() for p in name.split(SEPARATOR)]
    if len(parts) < 2 or not all(parts):
        raise BdError(f"combined defense {name!r}: name two or more defenses joined by '+', e.g. bnp+ft")
    return SEPARATOR.join(DEFENSES.canonical(p) for p in parts)


def _split_settings(parts: list[str], overrides: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """{'ft.epochs': 5, 'bnp.u': 3} -> one dict per part; every key must name its part."""
    per_part: list[dict[str, Any]] = [{} for _ in parts]
    for key, value in overrides.items():
        prefix, dot, setting = key.partition(".")
        if not dot:
            raise BdError(f"combined defense {name}: setting {key!r} must name its defense, e.g. "
                          f"{parts[-1]}.{key}={value}")
        target = DEFENSES.canonical(prefix)
        if target not in parts:
            raise BdError(f"combined defense {name}: setting {key!r} names {target}, which is not one of its "
                          f"parts ({', '.join(parts)})")
        for i, part in enumerate(parts):  # a part named twice (ft+clp+ft) takes the setting each time
            if part == target:
                per_part[i][setting] = value
    return per_part


def create_defense(name: str, overrides: dict[str, Any] | None = None) -> Defense:
    canonical = canonical_defense(name)
    if SEPARATOR not in canonical:
        return build_dataclass(DEFENSES[canonical], overrides or {}, what=f"defense {name}")
    parts = canonical.split(SEPARATOR)
    settings = _split_settings(parts, overrides or {}, canonical)
    return Combined(tuple(build_dataclass(DEFENSES[p], s, what=f"defense {p} (in {canonical})")
                          for p, s in zip(parts, settings, strict=True)))


def family_of(name: str) -> str:
    """The survey's family of a defense ('combined' for a sequence, 'other' if not registered)."""
    try:
        canonical = canonical_defense(name)
    except BdError:
        return "other"
    return Combined.family if SEPARATOR in canonical else DEFENSES[canonical].family


def describe(name: str) -> dict[str, Any]:
    canonical = canonical_defense(name)
    if SEPARATOR in canonical:
        parts = [describe(p) for p in canonical.split(SEPARATOR)]
        return {
            "name": canonical,
            "family": Combined.family,
            "paper": "; ".join(p["paper"] for p in parts),
            "needs": "; ".join(p["needs"] for p in parts if p["needs"]),
            "benchmarked": False,
            "components": [p["name"] for p in parts],
            "hyperparameters": {f"{p['name']}.{k}": v for p in parts for k, v in p["hyperparameters"].items()},
        }
    cls = DEFENSES[canonical]
    return {
        "name": cls.name,
        "family": cls.family,
        "paper": cls.paper,
        "needs": cls.needs,
        "benchmarked": cls.benchmarked,
        "hyperparameters": {f.name: f.default for f in dataclasses.fields(cls)},
    }
