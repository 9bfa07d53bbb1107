"""Grids of experiments: expand lists of settings into units with stable keys, train each
attacked model once, fan the defenses out over a local process pool or a Ray cluster, and
stream every result into the store as it arrives. Finished keys are skipped, so a killed
grid resumes where it stopped; a unit that raises is stored as failed and the grid goes on;
a unit whose worker was lost is reported and left for the next run; a unit that ran out of
GPU memory beside others is retried alone.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomllib
from bd_core.attacked import AttackSpec, DataBundle, load_data, weak_attack_warning
from bd_core.errors import InvalidRequest
from bd_core.store import ModelCache, ResultStore, load_model
from bd_core.train import PRESETS, Recipe, check_precision

from bd_cli.runner.backends import Lost, Runner
from bd_cli.runner.experiment import ExperimentSpec
from bd_cli.runner.worker import AttackTask, DefenseTask, Parcel, WorkerSetup, defense_unit, train_attack_unit

GRID_KEYS = (
    "datasets",
    "archs",
    "attacks",
    "poison_ratios",
    "defenses",
    "spc",
    "partitions",
    "seeds",
    "preset",
    "settings",
    "presets",
)


@dataclass(frozen=True)
class GridSpec:
    """The lists a grid sweeps; `defenses` may hold "all" (every benchmarked defense)."""

    datasets: tuple[str, ...] = ("fashion-mnist",)
    archs: tuple[str, ...] = ("preact-resnet18",)
    attacks: tuple[str, ...] = ("badnets",)
    poison_ratios: tuple[float, ...] = (0.1,)
    defenses: tuple[str, ...] = ("ft",)
    spc: tuple[int, ...] = (10,)
    partitions: tuple[int, ...] = (0,)
    seeds: tuple[int, ...] = (0,)
    preset: str = "quick"
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # defense -> overrides
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra training recipes by name

    @classmethod
    def from_toml(cls, path: Path, **flags: Any) -> GridSpec:
        """A grid file; flags given on the command line replace the file's values."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidRequest(f"cannot read grid file {path}: {e}") from e
        unknown = set(raw) - set(GRID_KEYS)
        if unknown:
            raise InvalidRequest(f"unknown keys in {path}: {', '.join(sorted(unknown))}; valid: {', '.join(GRID_KEYS)}")
        if isinstance(raw.get("partitions"), int):
            raw["partitions"] = list(range(raw["partitions"]))
        raw.update({k: v for k, v in flags.items() if v is not None})
        return cls.build(**raw)

    @classmethod
    def build(cls, **values: Any) -> GridSpec:
        lists = {f.name for f in dataclasses.fields(cls)} - {"preset", "settings", "presets"}
        clean = {k: tuple(v) if k in lists and not isinstance(v, str) else v for k, v in values.items()}
        for k in lists & set(clean):
            if isinstance(clean[k], str):
                clean[k] = tuple(x.strip() for x in clean[k].split(",") if x.strip())
        return cls(**clean)

    def with_overrides(self, items: Iterable[str]) -> GridSpec:
        """This grid with `--set defense.key=value` overrides merged over its settings (the first dot
        ends the defense's name, so bnp+ft.ft.epochs=5 sets FT's epochs inside bnp+ft)."""
        from bd_defenses import canonical_defense

        merged = {name: dict(values) for name, values in self.settings.items()}
        for item in items:
            name_key, eq, value = item.partition("=")
            name, dot, key = name_key.partition(".")
            if not eq or not dot:
                raise InvalidRequest(f"--set {item!r}: grid overrides are defense.key=value, e.g. ft.epochs=20")
            merged.setdefault(canonical_defense(name.strip()), {})[key.strip()] = value.strip()
        return dataclasses.replace(self, settings=merged)

    def register_presets(self) -> None:
        for name, recipe in self.presets.items():
            PRESETS.setdefault(name, Recipe(**recipe))

    def defense_names(self) -> list[str]:
        from bd_defenses import benchmarked_defenses, canonical_defense

        names: list[str] = []
        for d in self.defenses:
            for n in benchmarked_defenses() if d.lower() == "all" else [canonical_defense(d)]:
                if n not in names:
                    names.append(n)
        return names

    def units(
        self,
        tune: bool = False,
        refused: list[str] | None = None,
        precision: str = "fp32",
        notes: list[str] | None = None,
    ) -> list[ExperimentSpec]:
        """Every experiment of the grid, in a stable order; validated before anything runs. With
        `tune`, each defense with a tunable part also runs tuned (e.g. clp and clp/tuned). A
        defense that refuses an architecture of the grid (BNP on the ViT) is left out for that
        architecture, its one-line reason appended to `refused`. `precision` applies to the
        defenses that can run in it; the others run in fp32, named in `notes`."""
        from bd_core.models import MODELS, canonical_model
        from bd_defenses import create_defense, tunable_names, with_tuning
        from bd_defenses.combined import SEPARATOR
        from bd_defenses.tuning import SUFFIX

        self.register_presets()
        tunable = set(tunable_names())
        names = [
            variant
            for n in self.defense_names()
            for variant in ([n, with_tuning(n)] if tune and set(n.split(SEPARATOR)) & tunable else [n])
        ]
        defenses = {n: create_defense(n) for n in names}
        refusals = {
            (a, n): d.refusal(MODELS[canonical_model(a)].facts, canonical_model(a))
            for a in self.archs
            for n, d in defenses.items()
        }
        for line in dict.fromkeys(r for r in refusals.values() if r):
            if refused is not None:
                refused.append(line)
        check_precision(precision)
        precisions = {n: precision if precision in d.precisions else "fp32" for n, d in defenses.items()}
        stay = [n for n, p in precisions.items() if p != precision]
        if stay and notes is not None:
            notes.append(f"precision {precision}: {', '.join(stay)} cannot run in it and run in fp32")
        units = []
        for ds, arch, attack, ratio, seed in itertools.product(
            self.datasets, self.archs, self.attacks, self.poison_ratios, self.seeds
        ):
            spec = AttackSpec(ds, arch, attack, float(ratio), seed=int(seed), preset=self.preset)
            for defense, spc, part in itertools.product(names, self.spc, self.partitions):
                if refusals[arch, defense]:
                    continue
                settings = self.settings.get(defense, self.settings.get(defense.replace(SUFFIX, ""), {}))
                units.append(
                    ExperimentSpec(
                        spec,
                        defense,
                        int(spc),
                        int(part),
                        {k: str(v) for k, v in settings.items()},
                        precision=precisions[defense],
                    )
                )
        return units


@dataclass
class GridReport:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0  # not stored: their worker died; the next run runs them
    retried_alone: int = 0  # ran out of GPU memory beside other units, then ran with the GPU to themselves
    attacks_trained: int = 0
    failures: list[str] = field(default_factory=list)
    weak_attacks: list[str] = field(default_factory=list)  # attacked models whose backdoor did not take


@lru_cache(maxsize=4)
def _data(dataset: str, data_dir: str | None) -> DataBundle:
    return load_data(dataset, Path(data_dir) if data_dir else None)


def bind_units(units: list[ExperimentSpec], data_dir: Path | None) -> list[ExperimentSpec]:
    """Every unit bound to its dataset's content fingerprint (each dataset loaded once here)."""
    bundles = {name: _data(name, str(data_dir) if data_dir else None) for name in {u.attack.dataset for u in units}}
    return [u.for_data(bundles[u.attack.dataset]) for u in units]


def run_grid(
    units: list[ExperimentSpec],
    store: ResultStore,
    cache_dir: Path,
    runner: Runner,
    *,
    device: str = "cpu",
    data_dir: Path | None = None,
    threads: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> GridReport:
    """Run every unit not yet in `store`: phase 1 trains the missing attacked models (each once),
    phase 2 runs the defenses. Only this process writes the store and the driver's model cache."""
    units = bind_units(units, data_dir)
    report = GridReport(total=len(units))
    todo = [u for u in units if not store.has(u.key)]
    report.skipped = len(units) - len(todo)
    local = not runner.remote
    setup = WorkerSetup(
        str(cache_dir) if local else None,
        str(data_dir) if data_dir and local else None,
        device,
        {n: dataclasses.asdict(PRESETS[n]) for n in {u.attack.preset for u in todo}},
        threads,
        getattr(runner, "gpus", 0) if local else 0,
    )
    cache = ModelCache(cache_dir)
    shipped = {
        name: runner.share(_data(name, str(data_dir) if data_dir else None))
        for name in {u.attack.dataset for u in todo}
    }
    missing = {u.attack.key: u.attack for u in todo if cache.get_path(u.attack.key) is None}
    broken: dict[str, str] = {}
    for task, result in runner(
        train_attack_unit, [AttackTask(a, Parcel(shipped[a.dataset])) for a in missing.values()], setup
    ):
        key, error, blob = result if not isinstance(result, Lost) else (task.spec.key, result.reason, None)
        if blob is not None:
            cache.put_bytes(key, blob)  # trained on another node: the driver keeps it
        report.attacks_trained += error is None
        if error:
            broken[key] = error
    models = {
        key: runner.share(cache.path(key).read_bytes()) if runner.remote else None
        for key in {u.attack.key for u in todo if u.attack.key not in broken}
    }
    tasks = []
    for unit in todo:
        if unit.attack.key in broken:
            _record(
                store,
                {**unit.columns(), "config": unit.config(), "status": "failed", "error": broken[unit.attack.key]},
                report,
                on_result,
            )
        else:
            tasks.append(DefenseTask(unit, Parcel(shipped[unit.attack.dataset], models[unit.attack.key])))
    alone = _run_defenses(runner(defense_unit, tasks, setup), store, report, on_result)
    report.retried_alone = len(alone)
    _run_defenses(runner(defense_unit, alone, setup, alone=True), store, report, on_result, alone=True)
    for attack in {u.attack.key: u.attack for u in units}.values():
        path = cache.get_path(attack.key)
        if path is not None:
            warning = weak_attack_warning(
                float(load_model(path).meta["metrics"]["asr"]),
                f"{attack.attack} on {attack.dataset}/{attack.arch} ({attack.poison_ratio:.0%}, seed {attack.seed})",
            )
            if warning:
                report.weak_attacks.append(warning)
    return report


def _run_defenses(
    results: Iterable, store: ResultStore, report: GridReport, on_result, alone: bool = False
) -> list[DefenseTask]:
    """Store each finished row; returns the tasks that ran out of GPU memory beside others (to
    run alone). Out of memory while alone on its GPU is a failure like any other."""
    retry = []
    for task, row in results:
        if isinstance(row, Lost):
            report.lost += 1
            report.failures.append(f"lost (not stored; rerun the grid): {_unit_name(task.spec)}: {row.reason}")
        elif row["status"] == "out_of_memory" and not alone:
            retry.append(task)
        elif row["status"] == "out_of_memory":
            _record(store, {**row, "status": "failed"}, report, on_result)
        else:
            _record(store, row, report, on_result)
    return retry


def _unit_name(spec: ExperimentSpec) -> str:
    return f"{spec.defense} {spec.attack.attack} spc {spec.spc} p{spec.partition}"


def _record(store: ResultStore, row: dict[str, Any], report: GridReport, on_result) -> None:
    store.put(row)
    if row["status"] == "ok":
        report.ok += 1
    else:
        report.failed += 1
        report.failures.append(
            f"{row['defense']} {row['attack']} spc {row['spc']} p{row['partition']}: {row['error'].splitlines()[0]}"
        )
    if on_result:
        on_result(row)
