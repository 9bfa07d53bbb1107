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
from bd_core.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
ALIASES = {
    "badnets": ("badnet",),
    "blended": ("blend",),
    "sig": ("signal",),
    "wanet": ("warp",),
    "bpp": ("bppattack",),
    "lf": ("low-frequency",),
    "inputaware": ("input", "iad", "dynamic"),
    "ssba": ("sample-specific",),
}
for _cls in (BadNets, Blended, SIG, LF, SSBA, InputAware, BPP, WaNet):  # the survey's order (Section 5.2)
    ATTACKS.add(_cls.name, _cls, ALIASES.get(_cls.name, ()))
canonical_attack = ATTACKS.canonical


def create_attack(name: str, overrides: dict[str, Any] | None = None, preset: str | None = None) -> Attack:
    """The attack `name` with its paper defaults, then the preset's settings (e.g. CPU-sized
    networks under "quick"), then `overrides` (validated)."""
    cls = ATTACKS[canonical_attack(name)]
    settings = {**cls.preset_settings.get(preset or "", {}), **(overrides or {})}
    return build_dataclass(cls, settings, what=f"attack {name}")


__all__ = [
    "ATTACKS",
    "BPP",
    "LF",
    "SIG",
    "SSBA",
    "Attack",
    "BadNets",
    "Blended",
    "InputAware",
    "InputAwareTrigger",
    "PatternTrigger",
    "PixelTrigger",
    "SSBATrigger",
    "SqueezeTrigger",
    "StoredTrigger",
    "Trigger",
    "WaNet",
    "WarpTrigger",
    "canonical_attack",
    "create_attack",
]
