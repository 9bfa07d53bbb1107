"""bd's library layer: run one experiment or a whole grid from Python, without the CLI.

    from bd_cli.runner import AttackSpec, ExperimentSpec, GridSpec, run_experiment, run_grid

`bd run`, `bd defend` and `bd grid` are thin commands over these functions; the studies under
experiments/ and notebooks use them directly.
"""

from bd_core.attacked import AttackSpec, load_data

from bd_cli.runner.backends import LocalPool, Lost, RayCluster, choose_runner, sigterm_as_interrupt
from bd_cli.runner.experiment import ExperimentSpec, UnitFailed, execute, run_experiment
from bd_cli.runner.grid import GridReport, GridSpec, bind_units, run_grid

__all__ = [
    "AttackSpec",
    "ExperimentSpec",
    "GridReport",
    "GridSpec",
    "LocalPool",
    "Lost",
    "RayCluster",
    "UnitFailed",
    "bind_units",
    "choose_runner",
    "execute",
    "load_data",
    "run_experiment",
    "run_grid",
    "sigterm_as_interrupt",
]
