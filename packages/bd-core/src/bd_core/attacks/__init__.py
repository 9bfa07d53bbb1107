"""The survey's attacks, one module each, behind one registry."""

from __future__ import annotations

from typing import Any

from bd_core.attacks.badnets import BadNets
from bd_core.attacks.base import Attack, Trigger
from bd_core.attacks.blended import Blended
from bd_core.attacks.bpp import BPP, SqueezeTrigger
from bd_core.attacks.lf import LF
from bd_core.attacks.sig import SIG
from bd_core.attacks.wanet import WaNet, WarpTrigger
from bd_core.config import build_dataclass
from bd_core.errors import BdError

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (BadNets, Blended, SIG, LF, BPP, WaNet)}
ALIASES = {"badnet": "badnets", "blend": "blended", "signal": "sig", "warp": "wanet", "bppattack": "bpp", "lowfrequency": "lf"}


def canonical_attack(name: str) -> str:
    key = name.strip().lower().replace("_", "").replace("-", "")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise BdError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    return key


def create_attack(name: str, overrides: dict[str, Any] | None = None) -> Attack:
    """The attack `name` with its paper defaults, optionally overridden (validated)."""
    return build_dataclass(ATTACKS[canonical_attack(name)], overrides or {}, what=f"attack {name}")


__all__ = ["ATTACKS", "BPP", "LF", "SIG",  "SqueezeTrigger", "Attack", "BadNets", "Blended", "Trigger", "WaNet", "WarpTrigger", "canonical_attack",
           "create_attack"]
