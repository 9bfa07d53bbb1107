"""`bd`: train attacked models, apply defenses, measure ACC/ASR/RA/ARR/RDR.

This module only wires the commands (bd_cli/commands/, one module each). Torch and the bd
packages are imported inside commands so that `bd --help` is instant.
"""

from __future__ import annotations

import sys

import typer

from bd_cli import quiet_library_warnings
from bd_cli.commands import attack, experiment, grid, importing, kernels, listing, merge, report, show


def _no_type_for_flags() -> None:
    """Typer's rich help prints `<bool>` beside every on/off flag, --help included; a flag takes no
    value, so its type column is left empty."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # a typer without this hook (seen on 0.2x builds): its help stays as it is
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_no_type_for_flags()
quiet_library_warnings()

app = typer.Typer(
    name="bd",
    help="Tell whether a backdoor defense actually repairs a compromised image classifier.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
app.command(epilog=experiment.RUN_EXAMPLES)(experiment.run)
app.command(epilog=show.EXAMPLES)(show.show)
app.command(epilog=attack.EXAMPLES)(attack.attack)
app.command(epilog=experiment.DEFEND_EXAMPLES)(experiment.defend)
app.command("import", epilog=importing.EXAMPLES)(importing.import_)
app.command(epilog=report.EXAMPLES)(report.report)
app.command(epilog=grid.EXAMPLES)(grid.grid)
app.command(epilog=merge.EXAMPLES)(merge.merge)
app.command("list", epilog=listing.EXAMPLES)(listing.list_)

kernels_app = typer.Typer(
    help="The compiled bd_kernels extension: what is built, how fast it is.", no_args_is_help=True
)
kernels_app.command("info", epilog=kernels.INFO_EXAMPLES)(kernels.info)
kernels_app.command("bench", epilog=kernels.BENCH_EXAMPLES)(kernels.bench)
app.add_typer(kernels_app, name="kernels")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
