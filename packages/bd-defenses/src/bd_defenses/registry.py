"""Defense registry: `@register` on a frozen dataclass; lookup by the names users type."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bd_core.config import build_dataclass, declared_range, neutral_settings
from bd_core.errors import BdError
from bd_core.registry import Registry

from bd_defenses.base import Defense
from bd_defenses.combined import SEPARATOR, Combined
from bd_defenses.tuning import SUFFIX as TUNED
from bd_defenses.tuning import Tuned

DEFENSES: Registry[type[Defense]] = Registry(
    "defense", hint=" (or several joined by '+', e.g. bnp+ft; clp/tuned: its setting chosen by --tune)", sort_valid=True
)


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
    'BNP + ft' becomes 'bnp+ft'; 'CLP/tuned' (tuned by `--tune`) becomes 'clp/tuned'."""
    if SEPARATOR not in name:
        return _canonical_part(name)
    parts = [p.strip() for p in name.split(SEPARATOR)]
    if len(parts) < 2 or not all(parts):
        raise BdError(f"combined defense {name!r}: name two or more defenses joined by '+', e.g. bnp+ft")
    return SEPARATOR.join(_canonical_part(p) for p in parts)


def _canonical_part(name: str) -> str:
    base, slash, variant = name.strip().partition("/")
    if not slash:
        return DEFENSES.canonical(base)
    if variant.strip().lower() != TUNED.strip("/"):
        raise BdError(f"defense {name!r}: the only variant is {base.strip()}{TUNED} (its setting chosen by --tune)")
    canonical = DEFENSES.canonical(base)
    if not DEFENSES[canonical].tune:
        raise BdError(f"{canonical} has no tunable setting; tunable: {', '.join(tunable_names())}")
    return canonical + TUNED


def tunable_names() -> list[str]:
    return sorted(n for n, cls in DEFENSES.items() if cls.tune)


def with_tuning(name: str) -> str:
    """`name` with every tunable part tuned ('bnp+ft' -> 'bnp/tuned+ft/tuned'): what --tune runs."""
    parts = canonical_defense(name).split(SEPARATOR)
    tuned = [p if p.endswith(TUNED) or not DEFENSES[p].tune else p + TUNED for p in parts]
    if tuned == parts:
        raise BdError(f"--tune: {name} has no tunable setting; tunable: {', '.join(tunable_names())}")
    return SEPARATOR.join(tuned)


def _split_settings(parts: list[str], overrides: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """One settings dict per part: {'ft.epochs': 5, 'bnp.u': 3} for 'bnp+ft'. A combination's
    settings must name their part; a single defense takes them with or without its name
    ('anp.iterations=50' or 'iterations=50'). A setting that names a defense not in `name` is an
    error, not silently dropped."""
    bases = [p.removesuffix(TUNED) for p in parts]
    per_part: list[dict[str, Any]] = [{} for _ in parts]
    for key, value in overrides.items():
        prefix, dot, setting = key.partition(".")
        if not dot:
            if len(parts) > 1:
                raise BdError(
                    f"combined defense {name}: setting {key!r} must name its defense, e.g. {bases[-1]}.{key}={value}"
                )
            per_part[0][key] = value
            continue
        try:
            target = DEFENSES.canonical(prefix.partition("/")[0])
        except BdError:
            target = prefix
        if target not in bases:
            if len(parts) > 1:
                raise BdError(
                    f"combined defense {name}: setting {key!r} names {prefix}, which is not one of "
                    f"its parts ({', '.join(parts)})"
                )
            raise BdError(
                f"defense {name}: setting {key!r} names {prefix}, not {bases[0]}; "
                f"write {bases[0]}.{setting}={value} or {setting}={value}"
            )
        for i, part in enumerate(bases):  # a part named twice (ft+clp+ft) takes the setting each time
            if part == target:
                per_part[i][setting] = value
    return per_part


def create_defense(name: str, overrides: dict[str, Any] | None = None) -> Defense:
    canonical = canonical_defense(name)
    parts = canonical.split(SEPARATOR)
    settings = _split_settings(parts, overrides or {}, canonical)
    if len(parts) == 1:
        return _build_part(canonical, settings[0], f"defense {name}")
    return Combined(
        tuple(_build_part(p, s, f"defense {p} (in {canonical})") for p, s in zip(parts, settings, strict=True))
    )


def _build_part(canonical: str, overrides: dict[str, Any], what: str) -> Defense:
    """One defense; a tuned one takes its own `tolerance` setting, the rest go to the defense."""
    if not canonical.endswith(TUNED):
        return build_dataclass(DEFENSES[canonical], overrides, what=what)
    inner = {k: v for k, v in overrides.items() if k != "tolerance"}
    tuning = {k: v for k, v in overrides.items() if k == "tolerance"}
    return build_dataclass(
        Tuned,
        {**tuning, "inner": build_dataclass(DEFENSES[canonical.removesuffix(TUNED)], inner, what=what)},
        what=what,
    )


def family_of(name: str) -> str:
    """The survey's family of a defense ('combined' for a sequence, 'other' if not registered)."""
    try:
        canonical = canonical_defense(name)
    except BdError:
        return "other"
    return Combined.family if SEPARATOR in canonical else DEFENSES[canonical.removesuffix(TUNED)].family


def settings_added_since(name: str, stored: Mapping[str, Any]) -> list[str]:
    """The settings `name` has now that a stored result's settings lack: that result ran an
    earlier version of the defense (its key differs too, so it is never mistaken for a new run)."""
    canonical = canonical_defense(name)
    neutral = set() if SEPARATOR in canonical else neutral_settings(DEFENSES[canonical.removesuffix(TUNED)])
    return [k for k in describe(name)["hyperparameters"] if k not in stored and k not in neutral]


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
            "requires": ", ".join(sorted({r for p in parts for r in p["requires"].split(", ") if r})),
            "tune": [],
            "hyperparameters": {f"{p['name']}.{k}": v for p in parts for k, v in p["hyperparameters"].items()},
            "ranges": {f"{p['name']}.{k}": v for p in parts for k, v in p["ranges"].items()},
        }
    cls = DEFENSES[canonical.removesuffix(TUNED)]
    return {
        "name": canonical,
        "family": cls.family,
        "paper": cls.paper,
        "needs": cls.needs,
        "benchmarked": cls.benchmarked,
        "requires": ", ".join(sorted(cls.requires)),  # layer types; a model without them is refused
        "tune": [dict(c) for c in cls.tune],  # --tune's candidates, mildest first
        "hyperparameters": {f.name: f.default for f in dataclasses.fields(cls)},
        # each setting's valid range, as declared on its field (bd_core.config.setting)
        "ranges": {f.name: str(r) for f in dataclasses.fields(cls) if (r := declared_range(f)) is not None},
    }
