"""One experiment unit: attacked model (cached) -> defense on a mitigation set -> metrics -> store.

The same code serves `bd run`, `bd defend` and every unit of `bd grid` (`execute`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import bd_core
import torch
from bd_core.attacked import AttackSpec, DataBundle, obtain_attacked_model, weak_attack_warning, weights_digest
from bd_core.attacks import ATTACKS
from bd_core.config import keyed_settings
from bd_core.data import load_dataset, mitigation_set
from bd_core.data.imageset import ImageSet, as_unlabeled
from bd_core.data.mitigation import check_mitigation_request, indices_digest, mitigation_from_indices
from bd_core.devices import device_label
from bd_core.errors import BdError, Diverged, InvalidRequest
from bd_core.metrics import Metrics, arr, evaluate, rdr
from bd_core.models import MODELS
from bd_core.models.state import check_finite
from bd_core.profiling import profiled
from bd_core.progress import log
from bd_core.store import ModelCache, ResultStore, config_key
from bd_core.store.models import AttackedModel
from bd_core.train import check_precision
from bd_defenses import DEFENSES, Context, MitigationData, canonical_defense, create_defense

RESULT_FORMAT = 1


class UnitFailed(Exception):
    """A defense (or attack training) raised; the failure is stored with its traceback."""


@dataclass(frozen=True)
class ExperimentSpec:
    attack: AttackSpec
    defense: str
    spc: int | None = 10  # None when `mitigation_indices` gives the set
    partition: int = 0
    defense_settings: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # the defender's images as rows of the training split (e.g. the same D_m as another tool's run)
    mitigation_indices: tuple[int, ...] | None = None
    # the arithmetic of the defense's fine-tuning (bd_core.train.PRECISIONS); fp32 unless asked
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "defense", canonical_defense(self.defense))
        check_precision(self.precision)
        if self.mitigation_indices is None:
            check_mitigation_request(self.spc, self.partition)
        else:
            object.__setattr__(self, "spc", None)
            check_mitigation_request(1, self.partition)
        defense = self.build_defense()  # validate overrides early, before any training
        refusal = defense.refusal(MODELS[self.attack.arch].facts, self.attack.arch)
        if refusal:
            raise BdError(refusal)
        if self.precision not in defense.precisions:
            able = ", ".join(n for n, cls in DEFENSES.items() if self.precision in cls.precisions)
            raise InvalidRequest(
                f"{defense.name} runs in {', '.join(defense.precisions)} only; --precision "
                f"{self.precision} applies to the defenses whose training loop was measured in "
                f"it: {able}"
            )

    def build_defense(self):
        return create_defense(self.defense, self.defense_settings)

    def config(self) -> dict[str, Any]:
        config = {
            "format": RESULT_FORMAT,
            "attack": self.attack.config(),
            "defense": self.defense,
            "defense_settings": keyed_settings(self.build_defense()),
            "spc": self.spc,
            "partition": self.partition,
        }
        if self.mitigation_indices is not None:
            config["mitigation"] = {
                "indices": len(self.mitigation_indices),
                "sha256": indices_digest(self.mitigation_indices),
            }
        if self.precision != "fp32":  # fp32 runs keep the keys they always had
            config["precision"] = self.precision
        return config

    def for_data(self, data: DataBundle) -> ExperimentSpec:
        """This experiment bound to its data: the data's fingerprint enters the key."""
        bound = self.attack.for_data(data)
        return self if bound is self.attack else dataclasses.replace(self, attack=bound)

    def mitigation(self, train: ImageSet) -> ImageSet:
        """The defender's clean images: the given rows, or SPC per class of this partition."""
        if self.mitigation_indices is not None:
            return mitigation_from_indices(train, self.mitigation_indices)
        return mitigation_set(train, self.spc, self.partition)

    @functools.cached_property
    def key(self) -> str:  # kept: a grid asks each unit's key several times
        return config_key(self.config())

    def columns(self) -> dict[str, Any]:
        a = self.attack
        return {
            "key": self.key,
            "dataset": a.dataset,
            "arch": a.arch,
            "attack": a.attack,
            "poison_ratio": a.poison_ratio,
            "defense": self.defense,
            "spc": self.spc,
            "partition": self.partition,
            "seed": a.seed,
            "preset": a.preset,
        }


def approximations(spec: ExperimentSpec, data: DataBundle) -> list[str]:
    """What makes this run differ from the survey's setting; shown with every result."""
    notes = []
    if spec.precision != "fp32":
        notes.append(
            f"precision {spec.precision}: the defense's training steps ran under bf16 autocast "
            "(the survey's code: fp32)"
        )
    if data.train.info.note:
        notes.append(f"dataset: {data.train.info.note}")
    if spec.attack.imported:
        notes.append(f"attacked model imported (bd import), not trained by bd: source sha256 {spec.attack.source[:16]}")
        return notes
    if spec.attack.preset != "paper":
        r = spec.attack.recipe
        notes.append(
            f"preset {spec.attack.preset}: width x{r.width}, {r.train_limit or 'all'} training images, "
            f"{r.epochs} epochs (paper: full width, all images, 100 epochs)"
        )
    sized = {
        k: v
        for k, v in ATTACKS[spec.attack.attack].preset_settings.get(spec.attack.preset, {}).items()
        if k not in spec.attack.attack_settings
    }  # the user's --attack-set is not an approximation
    if sized:
        paper = ATTACKS[spec.attack.attack]()
        changes = ", ".join(f"{k} {v} (paper {getattr(paper, k)})" for k, v in sized.items())
        notes.append(f"{spec.attack.attack} trigger sized for preset {spec.attack.preset}: {changes}")
    return notes


def unlabeled_data(defense, data: DataBundle, spec: ExperimentSpec):
    """Out-of-distribution images for a defense that asks for them (`Defense.unlabeled_request`)."""
    request = defense.unlabeled_request()
    if request is None:
        return None
    name, count = request
    return as_unlabeled(load_dataset(name, "train"), data.train, count, seed=spec.attack.seed)


def execute(
    spec: ExperimentSpec,
    data: DataBundle,
    cache: ModelCache,
    device: str = "cpu",
    attacked: AttackedModel | None = None,
) -> dict[str, Any]:
    """Run one unit and return its result row (status ok, or failed with the error); stores nothing.
    `attacked` supplies the attacked model directly (`bd defend --model FILE`) instead of the cache.

    Request errors (BdError: impossible mitigation set, missing data) are raised, not
    recorded: they are the caller's to fix, not results."""
    spec = spec.for_data(data)
    if not 0 <= spec.attack.target < data.train.num_classes:  # a request error: checked before any work
        raise InvalidRequest(
            f"target class {spec.attack.target} is not a class of {spec.attack.dataset} "
            f"(0..{data.train.num_classes - 1})"
        )
    row: dict[str, Any] = {**spec.columns(), "config": spec.config(), "bd_version": bd_core.__version__}
    try:
        clean = spec.mitigation(data.train)  # refuse impossible sets before training
        if attacked is None:
            attacked, cache_hit = obtain_attacked_model(spec.attack, data, cache, device)
        else:
            attacked.model.to(device)
            cache_hit = True
        original, data = data, data.for_model(attacked.meta)
        pre = Metrics(**attacked.meta["metrics"])
        weights = weights_digest(attacked.model)
        warning = weak_attack_warning(pre.asr)
        if warning:
            log(f"[yellow]warning:[/yellow] {warning}")
        defense = spec.build_defense()
        # a tuned unit keeps its finished candidates beside the model cache until the unit finishes
        ctx = Context(
            device=device,
            seed=spec.attack.seed + spec.partition,
            precision=spec.precision,
            trials=cache.root.parent / "trials" / spec.key,
        )
        model = copy.deepcopy(attacked.model).to(device)
        torch.manual_seed(ctx.seed)
        if data is not original:  # the model's own normalization: draw the same rows from the renormalized split
            clean = spec.mitigation(data.train)
        if spec.mitigation_indices is not None:  # the store's spc column: images per class of the given set
            per_class = clean.class_counts().float()
            row["spc"] = round(float(per_class.mean()))
        log(f"applying {defense.name} with {len(clean)} clean images (spc {row['spc']}, partition {spec.partition})")
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        with profiled(f"{defense.name}-{spec.key}") as profile:
            started = time.perf_counter()
            repaired = defense(model, MitigationData(clean, unlabeled_data(defense, data, spec)), ctx)
            seconds = time.perf_counter() - started
        check_finite(repaired, f"{defense.name}'s defended model")
        if profile is not None:
            log(f"profile of {defense.name}: {profile}")
        started = time.perf_counter()
        post = evaluate(repaired, data.test, attacked.trigger, spec.attack.target, device=device)
        evaluate_seconds = time.perf_counter() - started
    except BdError:
        raise
    except Diverged as e:  # the reason is the whole story: no traceback
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
        return row
    except torch.OutOfMemoryError as e:  # a grid retries it with the GPU to itself
        row.update(status="out_of_memory", error=f"OutOfMemoryError: {str(e).splitlines()[0]}")
        return row
    except Exception as e:
        row.update(status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        return row
    row.update(
        status="ok",
        **pre.as_dict("_pre"),
        **post.as_dict("_post"),
        arr=arr(pre.acc, post.acc),
        rdr=rdr(pre.acc, post.ra),
        defense_seconds=round(seconds, 3),
        details={
            "defense": ctx.record,
            "attacked_model": attacked.meta.get("cache_key"),
            "attacked_model_weights": weights,
            "attacked_model_cached": cache_hit,
            "device": device_label(device),
            "evaluate_seconds": round(evaluate_seconds, 3),
            **(
                {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
                if device.startswith("cuda")
                else {}
            ),
            "approximations": approximations(spec, data),
            **({"warnings": [warning]} if warning else {}),
        },
    )
    return row


def run_experiment(
    spec: ExperimentSpec,
    data: DataBundle,
    cache: ModelCache,
    store: ResultStore,
    device: str = "cpu",
    force: bool = False,
    attacked: AttackedModel | None = None,
) -> dict[str, Any]:
    """Run one unit and store it; a finished key is returned from the store unless `force`.
    A unit that fails is stored as failed and its error raised."""
    spec = spec.for_data(data)
    key = spec.key
    if store.has(key) and not force:
        log(f"experiment {key} already in {store.path}; skipping (pass --force to run it again)")
        return {**store.get(key), "skipped": True}
    row = execute(spec, data, cache, device, attacked)
    # --force replaces a stored row only with a successful rerun: a failure never overwrites a good row
    written = store.put(row, replace=force and row["status"] == "ok")
    if row["status"] != "ok":
        where = f"recorded as {key} in {store.path}" if written else f"the stored result {key} was kept"
        raise UnitFailed(f"{spec.defense} failed ({where}): {row['error']}")
    return {**row, "skipped": False}
