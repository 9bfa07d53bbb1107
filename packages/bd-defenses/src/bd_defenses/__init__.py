"""bd_defenses: the survey's backdoor mitigations, one module each, behind one registry."""

from bd_defenses import (  # noqa: F401  (registers)
    anp,
    awm,
    baeraser,
    bcu,
    bnp,
    btidbf,
    clp,
    fmp,
    fp,
    fst,
    ft,
    ftsam,
    ibau,
    mesa,
    mmbd,
    nad,
    nc,
    nft,
    npd,
    pbe,
    rnp,
    sau,
    unit,
)
from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.registry import (
    DEFENSES,
    benchmarked_defenses,
    canonical_defense,
    create_defense,
    describe,
    family_of,
    register,
    settings_added_since,
    tunable_names,
    with_tuning,
)


def _load_plugins() -> None:
    """Import the modules named in $BD_PLUGINS (comma-separated): a team's own defenses
    register themselves exactly like the built-in ones, in every grid worker too."""
    import importlib
    import os

    for module in filter(None, (m.strip() for m in os.environ.get("BD_PLUGINS", "").split(","))):
        importlib.import_module(module)


_load_plugins()

__all__ = [
    "DEFENSES",
    "benchmarked_defenses",
    "Context",
    "Defense",
    "MitigationData",
    "canonical_defense",
    "create_defense",
    "describe",
    "family_of",
    "register",
    "settings_added_since",
    "tunable_names",
    "with_tuning",
]
__version__ = "0.1.0"
