"""The survey's attacks, one module each, behind one registry."""

from __future__ import annotations

from typing import Any

from bd_core.attacks.badnets import BadNets
from bd_core.attacks.base import Attack, PatternTrigger, PixelTrigger, Trigger
from bd_core.attacks.blended import Blended
from bd_core.attacks.bpp import BPP, SqueezeTrigger
from bd_core.attacks.inputaware import InputAware, InputAwareTrigger
from bd_core.attacks.lf import LF
from bd_core.attacks.sig import SIG
from bd_core.attacks.ssba import SSBA, SSBATrigger
from bd_core.attacks.stored import StoredTrigger
from bd_core.attacks.wanet import WaNet, WarpTrigger
from bd_core.config import build_dataclass
from bd_core.errors import BdError

# the survey's order (Section 5.2)
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (BadNets, Blended, SIG, LF, SSBA, InputAware, BPP, WaNet)
}
ALIASES = {"badnet": "badnets", "blend": "blended", "signal": "sig", "warp": "wanet", "bppattack": "bpp",
           "lowfrequency": "lf", "input": "inputaware", "iad": "inputaware", "dynamic": "inputaware",
           "samplespecific": "ssba"}


def canonical_attack(name: str) -> str:
    key = name.strip().lower().replace("_", "").replace("-", "")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise BdError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    return key


def create_attack(name: str, overrides: dict[str, Any] | None = None, preset: str | None = None) -> Attack:
    """The attack `name` with its paper defaults, then the preset's settings (e.g. CPU-sized
    networks under "quick"), then `overrides` (validated)."""
    cls = ATTACKS[canonical_attack(name)]
    settings = {**cls.preset_settings.get(preset or "", {}), **(overrides or {})}
    return build_dataclass(cls, settings, what=f"attack {name}")


__all__ = ["ATTACKS", "BPP", "LF", "SIG", "SSBA", "Attack", "BadNets", "Blended", "InputAware", "InputAwareTrigger",
           "PatternTrigger", "PixelTrigger", "SSBATrigger", "SqueezeTrigger", "StoredTrigger", "Trigger", "WaNet", "WarpTrigger",
           "canonical_attack", "create_attack"]
