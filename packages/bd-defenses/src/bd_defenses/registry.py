"""Defense registry: `@register` on a frozen dataclass; lookup by the names users type."""

from __future__ import annotations

import dataclasses
from typing import Any

from bd_core.config import build_dataclass
from bd_core.errors import BdError

from bd_defenses.base import Defense

DEFENSES: dict[str, type[Defense]] = {}
_ALIASES: dict[str, str] = {}


def _squash(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register(
    name: str, family: str, paper: str, aliases: tuple[str, ...] = (), needs: str = "", benchmarked: bool = True
):
    """Register a defense class; `benchmarked=False` marks the four the survey reviewed but did
    not run (MESA, BAERASER, BCU, UNIT): `--defense all` in a grid leaves them out."""

    def wrap(cls: type[Defense]) -> type[Defense]:
        cls.name, cls.family, cls.paper, cls.needs, cls.benchmarked = name, family, paper, needs, benchmarked
        DEFENSES[name] = cls
        for alias in (name, *aliases):
            _ALIASES[_squash(alias)] = name
        return cls

    return wrap


def benchmarked_defenses() -> list[str]:
    return [n for n, cls in DEFENSES.items() if cls.benchmarked]


def canonical_defense(name: str) -> str:
    key = _ALIASES.get(_squash(name))
    if key is None:
        raise BdError(f"unknown defense {name!r}; valid: {', '.join(sorted(DEFENSES))}")
    return key


def create_defense(name: str, overrides: dict[str, Any] | None = None) -> Defense:
    return build_dataclass(DEFENSES[canonical_defense(name)], overrides or {}, what=f"defense {name}")


def describe(name: str) -> dict[str, Any]:
    cls = DEFENSES[canonical_defense(name)]
    return {
        "name": cls.name,
        "family": cls.family,
        "paper": cls.paper,
        "needs": cls.needs,
        "benchmarked": cls.benchmarked,
        "hyperparameters": {f.name: f.default for f in dataclasses.fields(cls)},
    }
