"""Grids of experiments: expand lists of settings into units with stable keys, train each
attacked model once, fan the defenses out over a local process pool or a Ray cluster, and
stream every result into the store as it arrives. Finished keys are skipped, so a killed
grid resumes where it stopped; a unit that raises is stored as failed and the grid goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import tomllib
from bd_core.attacked import AttackSpec, DataBundle, load_data, obtain_attacked_model, weak_attack_warning
from bd_core.errors import InvalidRequest
from bd_core.progress import labelled
from bd_core.store import ModelCache, ResultStore, load_model
from bd_core.threads import cores, fixed_threads, share_cores
from bd_core.train import PRESETS, Recipe, check_precision

from bd_cli.experiment import ExperimentSpec, execute

GRID_KEYS = ("datasets", "archs", "attacks", "poison_ratios", "defenses", "spc", "partitions", "seeds", "preset",
             "settings", "presets")


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

    def units(self, tune: bool = False, refused: list[str] | None = None, precision: str = "fp32",
              notes: list[str] | None = None) -> list[ExperimentSpec]:
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
        names = [variant for n in self.defense_names()
                 for variant in ([n, with_tuning(n)] if tune and set(n.split(SEPARATOR)) & tunable else [n])]
        defenses = {n: create_defense(n) for n in names}
        refusals = {(a, n): d.refusal(MODELS[canonical_model(a)].facts, canonical_model(a))
                    for a in self.archs for n, d in defenses.items()}
        for line in dict.fromkeys(r for r in refusals.values() if r):
            if refused is not None:
                refused.append(line)
        check_precision(precision)
        precisions = {n: precision if precision in d.precisions else "fp32" for n, d in defenses.items()}
        stay = [n for n, p in precisions.items() if p != precision]
        if stay and notes is not None:
            notes.append(f"precision {precision}: {', '.join(stay)} cannot run in it and run in fp32")
        units = []
        for ds, arch, attack, ratio, seed in itertools.product(self.datasets, self.archs, self.attacks,
                                                                self.poison_ratios, self.seeds):
            spec = AttackSpec(ds, arch, attack, float(ratio), seed=int(seed), preset=self.preset)
            for defense, spc, part in itertools.product(names, self.spc, self.partitions):
                if refusals[arch, defense]:
                    continue
                settings = self.settings.get(defense, self.settings.get(defense.replace(SUFFIX, ""), {}))
                units.append(ExperimentSpec(spec, defense, int(spc), int(part),
                                            {k: str(v) for k, v in settings.items()}, precision=precisions[defense]))
        return units


# --- what runs in a worker (a pool process or a Ray task) -------------------------------

@dataclass(frozen=True)
class WorkerSetup:
    """Everything a fresh worker process needs besides the unit itself."""

    cache_dir: str
    data_dir: str | None
    device: str
    presets: dict[str, dict[str, Any]]
    threads: int = 0


def _prepare(setup: WorkerSetup) -> None:
    import torch

    from bd_cli import quiet_library_warnings

    quiet_library_warnings()
    if setup.threads:
        torch.set_num_threads(setup.threads)
    else:  # its share of the cores among every live bd process (other grids, `bd run`s), kept between epochs
        share_cores()
    for name, recipe in setup.presets.items():
        PRESETS.setdefault(name, Recipe(**recipe))


@lru_cache(maxsize=4)
def _data(dataset: str, data_dir: str | None) -> DataBundle:
    return load_data(dataset, Path(data_dir) if data_dir else None)


def train_attack_unit(spec: AttackSpec, setup: WorkerSetup) -> tuple[str, str | None]:
    """Phase 1: train (or find) one attacked model; returns (key, error or None)."""
    _prepare(setup)
    try:
        with labelled(f"{spec.attack} on {spec.arch}"):
            obtain_attacked_model(spec, _data(spec.dataset, setup.data_dir), ModelCache(Path(setup.cache_dir)),
                                  setup.device)
        return spec.key, None
    except Exception as e:  # recorded against every unit that needed this model
        return spec.key, f"attack training failed: {type(e).__name__}: {e}"


def unit_label(spec: ExperimentSpec) -> str:
    """How a unit's progress lines are told apart in a grid's log, where workers interleave."""
    a = spec.attack
    return f"{a.attack} on {a.arch}, {spec.defense}, spc {spec.spc}, partition {spec.partition}"


def defense_unit(spec: ExperimentSpec, setup: WorkerSetup) -> dict[str, Any]:
    """Phase 2: one defense unit -> its result row (never raises)."""
    _prepare(setup)
    try:
        with labelled(unit_label(spec)):
            return execute(spec, _data(spec.attack.dataset, setup.data_dir), ModelCache(Path(setup.cache_dir)),
                           setup.device)
    except Exception as e:
        return {**spec.columns(), "config": spec.config(), "status": "failed", "error": f"{type(e).__name__}: {e}"}


# --- backends ------------------------------------------------------------------------------

Runner = Callable[[Callable, list, WorkerSetup], Iterable]


def local_runner(workers: int) -> Runner:
    """Run tasks in a spawn-started process pool; yields results as they complete. When the
    consumer stops early (an error while storing a row, Ctrl-C, SIGTERM), the tasks not yet
    started are cancelled and the running ones stopped: a plain `with` would run every one of
    them first, results nobody would store."""

    def run(fn: Callable, items: list, setup: WorkerSetup) -> Iterable:
        if not items:
            return
        pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=get_context("spawn"))
        finished = False
        try:
            pending = {pool.submit(fn, item, setup) for item in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
            finished = True
        finally:
            if not finished:
                _stop_workers(pool)
            pool.shutdown(wait=True, cancel_futures=not finished)

    return run


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's running tasks now. Their files are safe to cut off (models, kept tuning
    candidates and rows are all written whole or not at all); waiting would cost up to a whole
    unit (an hour for a tuned one on a CPU) for a result that is thrown away."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a batch scheduler's stop) ends the grid the way Ctrl-C does:
    the pool is stopped, the rows already stored stay, and the command says how to resume.
    Only this process's handler changes (spawned workers start with the default one)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def choose_runner(backend: str, address: str | None, workers: int, device: str) -> tuple[Runner, int]:
    """(runner, torch threads per worker): Ray tasks take one thread each; the local pool runs one
    worker per core (per GPU on CUDA) unless told otherwise. Its workers take the number fixed by
    $BD_THREADS or OMP_NUM_THREADS, else 0: each its share of the cores among all live bd
    processes, so two grids side by side (or a grid and a `bd run`) do not oversubscribe them."""
    if backend == "ray":
        return ray_runner(address), 1
    if not workers:
        import torch

        workers = torch.cuda.device_count() if device.startswith("cuda") else cores()
    return local_runner(max(1, workers)), fixed_threads() or 0


def ray_runner(address: str | None) -> Runner:
    """Run tasks as Ray tasks on an existing cluster (`address`) or a local instance; results
    stream back as they finish. Attacked models and the store live on the driver's paths:
    on a multi-node cluster the cache directory must be shared (NFS or similar)."""
    try:
        import ray
    except ImportError as e:
        raise InvalidRequest("--backend ray needs Ray: pip install 'ray>=2.60'") from e

    def run(fn: Callable, items: list, setup: WorkerSetup) -> Iterable:
        if not items:
            return
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in ("BD_PLUGINS", "BD_CACHE", "BD_DATA", "BD_PROGRESS", "BD_PROGRESS_EVERY",
                                              "PYTHONPATH") if k in os.environ}
            ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                     include_dashboard=False)
        gpus = 1 if setup.device.startswith("cuda") else 0
        task = ray.remote(num_cpus=max(1, setup.threads), num_gpus=gpus)(fn)
        pending = [task.remote(item, setup) for item in items]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:  # the consumer stopped early: the cluster need not run what nobody stores
            for ref in pending:
                ray.cancel(ref, force=True)

    return run


@dataclass
class GridReport:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    attacks_trained: int = 0
    failures: list[str] = field(default_factory=list)
    weak_attacks: list[str] = field(default_factory=list)  # attacked models whose backdoor did not take


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
    units = bind_units(units, data_dir)
    report = GridReport(total=len(units))
    todo = [u for u in units if not store.has(u.key)]
    report.skipped = len(units) - len(todo)
    setup = WorkerSetup(str(cache_dir), str(data_dir) if data_dir else None, device,
                        {n: dataclasses.asdict(PRESETS[n]) for n in {u.attack.preset for u in todo}}, threads)
    cache = ModelCache(cache_dir)
    attacks = list({u.attack.key: u.attack for u in todo if cache.get_path(u.attack.key) is None}.values())
    broken: dict[str, str] = {}
    for key, error in runner(train_attack_unit, attacks, setup):
        report.attacks_trained += error is None
        if error:
            broken[key] = error
    ready = []
    for unit in todo:
        if unit.attack.key in broken:
            row = {**unit.columns(), "config": unit.config(), "status": "failed", "error": broken[unit.attack.key]}
            _record(store, row, report, on_result)
        else:
            ready.append(unit)
    for row in runner(defense_unit, ready, setup):
        _record(store, row, report, on_result)
    for attack in {u.attack.key: u.attack for u in units}.values():
        path = cache.get_path(attack.key)
        if path is not None:
            warning = weak_attack_warning(float(load_model(path).meta["metrics"]["asr"]),
                                          f"{attack.attack} on {attack.dataset}/{attack.arch} "
                                          f"({attack.poison_ratio:.0%}, seed {attack.seed})")
            if warning:
                report.weak_attacks.append(warning)
    return report


def _record(store: ResultStore, row: dict[str, Any], report: GridReport, on_result) -> None:
    store.put(row)
    if row["status"] == "ok":
        report.ok += 1
    else:
        report.failed += 1
        report.failures.append(f"{row['defense']} {row['attack']} spc {row['spc']} p{row['partition']}: "
                               f"{row['error'].splitlines()[0]}")
    if on_result:
        on_result(row)
