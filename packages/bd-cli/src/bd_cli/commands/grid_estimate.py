"""`bd grid --dry-run`, `--estimate` and `--calibrate`: what a grid holds and what it will cost."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from bd_cli.output import Format, emit, out, say


def _stored(path: Path):
    """Rows and attacked models' metadata on this machine (nothing created when the store is absent)."""
    from bd_core.errors import BdError
    from bd_core.paths import cache_root
    from bd_core.safefile import load_metadata, metadata_json

    rows = []
    if path.exists():
        from bd_core.store import ResultStore

        with ResultStore(path, readonly=True) as results:
            rows = results.query()
    metas = []
    for file in sorted((cache_root() / "models").glob("*/model.safetensors")):
        try:
            metas.append(metadata_json(load_metadata(file), "bd_model", file))
        except BdError:  # a damaged cache entry has no time to contribute
            continue
    return rows, metas


def _bind_available(units, data_dir, bind_units):
    """Units bound to their data where the dataset is here; a projection needs no images, so the
    units of a dataset that is not here stay unbound (counted as to run) instead of failing."""
    from bd_core.errors import BdError

    bound, missing = [], []
    for name in dict.fromkeys(u.attack.dataset for u in units):
        mine = [u for u in units if u.attack.dataset == name]
        try:
            bound += bind_units(mine, data_dir)
        except BdError:
            bound += mine
            missing.append(name)
    return bound, missing


def show_estimate(units, path: Path, data_dir, device: str, gpus: int, format: Format) -> None:
    """Count the grid's units (and with `gpus`, project its time per device kind)."""
    from bd_core.devices import device_label
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache

    from bd_cli.runner import bind_units
    from bd_cli.runner.estimate import CostModel, duration

    units, missing = _bind_available(units, data_dir, bind_units)
    rows, metas = _stored(path)
    stored_keys = {r["key"] for r in rows}
    todo = [u for u in units if u.key not in stored_keys]
    cache = ModelCache(cache_root() / "models")
    attacks = {u.attack.key: u.attack for u in units}
    to_train = [a for k, a in attacks.items() if cache.get_path(k) is None]
    summary = {
        "datasets_not_here": missing,
        "units": len(units),
        "stored": len(units) - len(todo),
        "to_run": len(todo),
        "attacked_models": len(attacks),
        "attack_trainings": len(to_train),
        "store": str(path),
    }
    if not gpus:
        emit(
            summary,
            format,
            lambda: say(
                f"{summary['units']} units ({summary['attacked_models']} attacked models, {len(to_train)} to train): "
                f"{summary['stored']} already stored in {path}, {summary['to_run']} to run"
            ),
        )
        return
    model = CostModel(rows, metas)
    here = device_label(device)
    projections = [model.project(todo, to_train, d) for d in dict.fromkeys([here, *model.devices()])]
    summary["projections"] = [
        {
            **p.as_dict(),
            "this_machine": p.device == here,
            "wall_seconds": round(p.wall_seconds(1 if p.device == "cpu" else gpus), 1),
            "devices": 1 if p.device == "cpu" else gpus,
        }
        for p in projections
    ]

    def show_table() -> None:
        say(
            f"{summary['units']} units, {summary['to_run']} to run ({summary['stored']} stored); "
            f"{len(attacks)} attacked models, {len(to_train)} to train"
        )
        if missing:
            say(f"not on this machine: {', '.join(missing)} (their units are counted as not stored)")
        table = Table(title="projected time of the units still to run", title_justify="left")
        for column in ("device", "units: measured / scaled / unknown", "total", "wall"):
            table.add_column(column, overflow="fold")
        for p, d in zip(projections, summary["projections"], strict=True):
            scaled = p.units["scaled (spc)"] + p.units["scaled (arch)"] + p.units["scaled (device)"]
            known = p.units["measured"] + scaled > 0
            name = p.device + (" (this machine)" if d["this_machine"] else "")
            wall = (
                f"{duration(d['wall_seconds'])} on {d['devices']}" if d["devices"] > 1 else duration(d["wall_seconds"])
            )
            table.add_row(
                name,
                f"{p.units['measured']} / {scaled} / {p.units['unknown']}"
                + (f"\n{p.attacks_unknown} attack trainings unknown" if p.attacks_unknown else ""),
                duration(p.total_seconds) if known else "-",
                wall if known else "-",
            )
        out.print(table)
        say(
            "measured: median of stored rows with the same defense, arch, preset, SPC and device; scaled: "
            "from other SPCs (linear), another arch or another device (median ratio over settings measured on both); "
            "totals leave out the unknown units"
        )
        unknown = sorted({n for p in projections if p.device == here for n in p.unknown})
        if unknown:
            say(
                f"no stored time on {here} for: {', '.join(unknown[:12])}{' ...' if len(unknown) > 12 else ''} "
                "(bd grid ... --calibrate runs one short unit of each)"
            )

    emit(summary, format, show_table)


def calibration(units, path: Path, device: str):
    """The units `--calibrate` runs: one per (defense, arch, preset) with no time stored here."""
    from bd_core.devices import device_label

    from bd_cli.runner.estimate import CostModel, calibration_units

    rows, _ = _stored(path)
    return calibration_units(units, CostModel(rows), device_label(device))
