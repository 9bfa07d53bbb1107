"""What a defense receives: the model, the defender's clean data and a context.

By construction a defense cannot see test data or the trigger: `MitigationData`
holds only the clean mitigation set, and `Context` only run settings.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from bd_core.config import check_settings
from bd_core.data import Augment, ImageSet
from bd_core.errors import BdError
from bd_core.models import ModelFacts

MIN_HELD_OUT = 100
LAYER_NAMES = {
    "conv": "convolutions",
    "batchnorm": "BatchNorm layers",
    "attention": "self-attention",
    "layernorm": "LayerNorm layers",
}


@dataclass(frozen=True)
class MitigationData:
    """The defender's clean images (SPC per class) — and, only for a defense that says it needs
    them (BCU), unlabeled out-of-distribution images."""

    clean: ImageSet
    unlabeled: ImageSet | None = None

    @property
    def num_classes(self) -> int:
        return self.clean.num_classes

    def split(self, held_out_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
        """Stratified (fit, held-out) split, for choosing thresholds on the defender's own data."""
        g = torch.Generator().manual_seed(seed)
        fit_rows, held_rows = [], []
        for c in range(self.num_classes):
            members = (self.clean.labels == c).nonzero().squeeze(1)
            members = members[torch.randperm(len(members), generator=g)]
            n_held = max(1, round(held_out_fraction * len(members))) if len(members) > 1 else 0
            held_rows.append(members[:n_held])
            fit_rows.append(members[n_held:])
        return self.clean.subset(torch.cat(fit_rows)), self.clean.subset(torch.cat(held_rows))

    def selection_split(self, seed: int, held_out_fraction: float = 0.2) -> tuple[ImageSet, ImageSet, str]:
        """(fit, check, rule) for defenses that choose a threshold by clean accuracy.

        A stratified held-out part when it has at least MIN_HELD_OUT images; below that
        (e.g. SPC 2 or 10 on 10 classes) accuracy on a handful of images is noise, so the
        whole mitigation set serves both roles and the rule says so."""
        n = len(self.clean)
        if round(held_out_fraction * n) >= MIN_HELD_OUT:
            fit, held = self.split(held_out_fraction, seed)
            return fit, held, f"held-out {len(held)} of {n} mitigation images"
        return self.clean, self.clean, f"all {n} mitigation images (held-out part would have < {MIN_HELD_OUT})"

    def augment(self) -> Augment:
        return Augment.for_dataset(self.clean.info)


@dataclass
class Context:
    """Run settings handed to a defense, and the record it fills in."""

    device: str = "cpu"
    seed: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # of the training steps (bd_core.train.PRECISIONS), where the defense allows
    # where a tuned defense keeps its finished candidates, so a stopped unit resumes after them
    # (bd_defenses.tuning.TrialLog); None: nothing kept
    trials: Path | None = None

    def report(self, **values: Any) -> None:
        """Note what the defense did (channels pruned, mask sparsity, ...) in the result record."""
        self.record.update(values)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def fresh(self) -> Context:
        """The same run settings with an empty record: one per trial of a tuned defense."""
        return Context(device=self.device, seed=self.seed, precision=self.precision, trials=self.trials)


@dataclass(frozen=True)
class Defense:
    """Base of defense dataclasses: fields are hyperparameters with the paper's defaults."""

    name: ClassVar[str]
    family: ClassVar[str]
    paper: ClassVar[str]
    needs: ClassVar[str] = ""  # anything beyond the survey's defender (e.g. BCU's OOD data)
    benchmarked: ClassVar[bool] = True  # False for the methods the survey reviewed but did not run
    # the arithmetic the defense can run in: "bf16" only where all its training runs as steps of
    # bd_core.train.optimize (whose autocast is written once) and was measured (bench/RESULTS.md)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # layer types the method's criterion is defined on (ModelFacts.layer_types), each with why:
    # a model without them is refused before anything runs
    requires: ClassVar[dict[str, str]] = {}
    # `--tune`'s candidate settings for the decisive hyperparameter, mildest first, the paper's
    # default among them (bd_defenses.tuning); empty: not tunable
    tune: ClassVar[tuple[dict[str, Any], ...]] = ()

    def __post_init__(self) -> None:
        """Every setting finite and inside the range declared on its field (bd_core.config.setting);
        a subclass with checks of its own calls this first."""
        check_settings(self)

    def refusal(self, facts: ModelFacts, arch: str) -> str | None:
        """One line saying which layer type this defense needs and `arch` lacks, or None."""
        for layer, why in self.requires.items():
            if layer not in facts.layer_types:
                return (
                    f"{self.name} needs {LAYER_NAMES[layer]} ({why}); {arch} has none "
                    f"(it is built from {', '.join(LAYER_NAMES[t] for t in sorted(facts.layer_types))})"
                )
        return None

    def check_model(self, model: nn.Module, arch: str | None = None) -> None:
        """Raise BdError with `refusal`'s line if the model lacks a layer type this defense needs."""
        facts = getattr(model, "facts", None)
        line = self.refusal(facts, arch or type(model).__name__) if facts is not None else None
        if line:
            raise BdError(line)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        """The defended model. A defense in two stages (below) is its second after its first; every
        other defense overrides this."""
        return self.second_stage(self.first_stage(model, data, ctx), data, ctx)

    # `--tune` candidates that differ only in these settings share the defense's costly first
    # stage (ANP's learned masks, NC's reversed triggers): `first_stage` runs once and
    # `second_stage` once per candidate, on its own copy of what the first stage made
    second_stage_settings: ClassVar[frozenset[str]] = frozenset()

    def first_stage(self, model: nn.Module, data: MitigationData, ctx: Context) -> Any:  # pragma: no cover
        raise NotImplementedError

    def second_stage(self, first: Any, data: MitigationData, ctx: Context) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def second_stage_key(self, first: Any) -> Hashable | None:
        """Candidates with equal keys get one second stage and its result (NC: the same flagged
        classes, the same unlearning); None: each candidate runs its own."""
        return None

    def run_candidates(
        self, candidates: tuple[dict[str, Any], ...], model: nn.Module, data: MitigationData, ctx: Context
    ) -> list[tuple[nn.Module, dict[str, Any]]]:
        """This defense with each of `candidates`' settings, each applied to its own copy of
        `model` from the same seed: (defended model, the record its run made) per candidate, for
        `--tune`. Where every candidate varies only `second_stage_settings`, the first stage runs
        once; what this returns equals running each candidate alone (tests/bd_defenses/test_tuning.py)."""
        if not self.shares_first_stage(candidates):
            results = []
            for settings in candidates:
                trial = ctx.fresh()
                results.append((dataclasses.replace(self, **settings)(copy.deepcopy(model), data, trial), trial.record))
            return results
        first = self.first_stage(copy.deepcopy(model), data, ctx.fresh())
        finished: dict[Hashable, tuple[nn.Module, dict[str, Any]]] = {}
        keys = []
        for index, settings in enumerate(candidates):
            candidate = dataclasses.replace(self, **settings)
            key = candidate.second_stage_key(first)
            key = ("candidate", index) if key is None else key
            if key not in finished:
                trial = ctx.fresh()
                finished[key] = candidate.second_stage(copy.deepcopy(first), data, trial), trial.record
            keys.append(key)
        return [finished[key] for key in keys]

    def shares_first_stage(self, candidates: tuple[dict[str, Any], ...]) -> bool:
        """True when `candidates` differ only in `second_stage_settings`: run together, they share
        one first stage (cheaper than running each alone, with the same results)."""
        return bool(self.second_stage_settings) and all(set(s) <= self.second_stage_settings for s in candidates)

    def unlabeled_request(self) -> tuple[str, int] | None:
        """(dataset name, number of images) of unlabeled data this defense needs beyond the
        defender's clean set, or None (the survey's defender has none). The runner loads them
        into `MitigationData.unlabeled`; no defense reads a dataset itself."""
        return None
