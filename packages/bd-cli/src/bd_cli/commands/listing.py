"""`bd list`: what bd knows (attacks, defenses, models, datasets), with settings and defaults."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.table import Table

from bd_cli.options import OutputFormat, examples
from bd_cli.output import Format, emit, out

EXAMPLES = examples("bd list defenses", "bd list attacks --format json   (every field, for programs)")


class Listing(str, Enum):
    attacks = "attacks"
    defenses = "defenses"
    models = "models"
    datasets = "datasets"


def list_(
    what: Annotated[Listing, typer.Argument(help="attacks, defenses, models or datasets")],
    format: OutputFormat = Format.table,
) -> None:
    """List what bd knows, with settings and defaults (each setting's valid range for defenses)."""
    rows = ROWS[what]()
    emit(rows, format, lambda: out.print(TABLES[what](rows)))


def _defense_rows() -> list[dict[str, Any]]:
    from bd_defenses import DEFENSES, describe

    return [describe(name) for name in sorted(DEFENSES)]


def _attack_rows() -> list[dict[str, Any]]:
    from bd_core.attacks import ATTACKS

    return [
        {
            "name": n,
            "clean_label": c.clean_label,
            "training_controlled": c.training_controlled,
            "settings": c().settings(),
            "quick": {**c.preset_settings.get("quick", {}), **c.preset_recipes.get("quick", {})},
            "paper": c.paper,
        }
        for n, c in ATTACKS.items()
    ]


def _model_rows() -> list[dict[str, Any]]:
    from bd_core.models import MODELS

    return [
        {"name": n, "class": c.__name__, "layers": ", ".join(sorted(c.facts.layer_types))} for n, c in MODELS.items()
    ]


def _dataset_rows() -> list[dict[str, Any]]:
    from bd_core.data.datasets import SPECS

    return [{"name": n, "layout": s.layout, "note": s.note} for n, s in SPECS.items()] + [
        {"name": "synthetic", "layout": "generated", "note": "procedural test data"}
    ]


ROWS = {
    Listing.defenses: _defense_rows,
    Listing.attacks: _attack_rows,
    Listing.models: _model_rows,
    Listing.datasets: _dataset_rows,
}


def _table(*columns: str) -> Table:
    """Three columns at most, so that a listing reads at 80 columns (JSON has every field)."""
    table = Table(show_lines=True)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _settings(values: dict[str, Any], ranges: dict[str, str] | None = None) -> str:
    ranges = ranges or {}
    return "\n".join(f"{k}={v}" + (f" {ranges[k]}" if k in ranges else "") for k, v in values.items()) or "-"


def _defense_table(rows: list[dict[str, Any]]) -> Table:
    table = _table("defense", "family, paper", "settings (default, range)")
    for r in rows:
        kind = (
            r["family"]
            + ("" if r["benchmarked"] or "reviewed only" in r["paper"] else ", reviewed only")
            + (f", needs {r['requires']}" if r.get("requires") else "")
        )
        table.add_row(r["name"], f"{kind}\n{r['paper']}", _settings(r["hyperparameters"], r.get("ranges")))
    return table


def _attack_table(rows: list[dict[str, Any]]) -> Table:
    table = _table("attack", "kind, paper", "settings (quick preset)")
    for r in rows:
        kind = ("clean-label" if r["clean_label"] else "poison-label") + (
            ", controls training" if r["training_controlled"] else ""
        )
        quick = f"\nquick: {_settings(r['quick'])}" if r["quick"] else ""
        table.add_row(r["name"], f"{kind}\n{r['paper']}", _settings(r["settings"]) + quick)
    return table


def _plain_table(*columns: str):
    def build(rows: list[dict[str, Any]]) -> Table:
        table = _table(*columns)
        for r in rows:
            table.add_row(*(str(r[c]) for c in columns))
        return table

    return build


TABLES = {
    Listing.defenses: _defense_table,
    Listing.attacks: _attack_table,
    Listing.models: _plain_table("name", "class", "layers"),
    Listing.datasets: _plain_table("name", "layout", "note"),
}
