"""bd_defenses: the survey's backdoor mitigations, one module each, behind one registry."""

from bd_defenses import anp, awm, bnp, clp, fmp, fp, ft, mmbd, nft, npd, rnp, unit  # noqa: F401  (registers)
from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import DEFENSES, canonical_defense, create_defense, describe, register

__all__ = ["DEFENSES", "Context", "Defense", "MitigationData", "canonical_defense", "create_defense", "describe", "register"]
__version__ = "0.1.0"
