"""Defender-only hyperparameter selection (`--tune`): the survey's open challenge 2 (Sec. 8).

ASR and RDR are not observable to a defender (finding F4), so every choice here is made from
signals the defender can compute with the model and the clean mitigation set alone:

* ``acc`` and ``loss``: clean accuracy and cross-entropy on a check set (a stratified held-out
  part of D_m when it has at least MIN_HELD_OUT images, else D_m itself, as the pruning
  defenses already choose their thresholds: `MitigationData.selection_split`);
* ``agreement``: the fraction of augmented check images on which the defended model predicts
  what the original model predicts (how much the defense changed the function);
* ``entropy`` and ``confidence``: the defended model's mean prediction entropy and top-class
  probability on augmented check images.

Each tunable defense lists candidate settings from its mildest to its strongest (`Defense.tune`).
The rule: the strongest candidate whose check accuracy is within `tolerance` of the best
candidate's. It is the rule by which FP and ANP already pick how much to prune, applied to the
defense's decisive setting: remove as much as the defender's own clean data says costs nothing.
Candidates run through `Defense.run_candidates`: each alone, except where a costly stage comes
before the setting acts (ANP's masks, NC's reversed triggers), which they then share.
A `Tuned` defense sees exactly what any defense sees (`MitigationData`, `Context`): no test
image and no trigger can reach the selection, by construction.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.data import Augment, ImageSet
from bd_core.data.batches import augmented_batch
from bd_core.data.pixels import Pixels

from bd_defenses.base import Context, Defense, MitigationData, check_between

SUFFIX = "/tuned"  # how a tuned defense is named in results and reports: clp/tuned


@torch.no_grad()
def clean_signals(model: nn.Module, original: nn.Module, check: ImageSet, device: str, seed: int) -> dict[str, float]:
    """The defender's signals on `check` (see the module docstring), rounded for the record."""
    model.eval(), original.eval()
    pixels = Pixels.of(check, device)
    x = pixels.normalize(pixels.x)
    logits = model(x)
    acc = (logits.argmax(1) == pixels.y).float().mean()
    loss = F.cross_entropy(logits, pixels.y)
    mean, std = (t.to(device) for t in check.mean_std())
    augmented = augmented_batch(check.images.to(device), Augment.for_dataset(check.info),
                                torch.Generator().manual_seed(seed), mean, std)
    probs = model(augmented).softmax(1)
    agreement = (probs.argmax(1) == original(augmented).argmax(1)).float().mean()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()
    return {"acc": round(float(acc), 4), "loss": round(float(loss), 4), "agreement": round(float(agreement), 4),
            "entropy": round(float(entropy), 4), "confidence": round(float(probs.max(1).values.mean()), 4)}


def choose(signals: list[dict[str, float]], tolerance: float) -> int:
    """Index of the strongest candidate (the last) whose accuracy is within `tolerance` of the best."""
    best = max(s["acc"] for s in signals)
    return max(i for i, s in enumerate(signals) if s["acc"] >= best - tolerance)


@dataclass(frozen=True)
class Tuned(Defense):
    """`inner` with its decisive setting chosen from `inner.tune` by the defender's signals."""

    inner: Defense
    tolerance: float = 0.02  # accuracy a stronger candidate may lose against the best one
    # the settings tried, mildest first: `inner.tune` unless given; part of the stored config, so
    # a result made with other candidates is never taken for this one
    candidates: tuple[dict[str, Any], ...] = ()

    family: ClassVar[str] = "tuned"
    paper: ClassVar[str] = "defender-only selection of the decisive setting (survey Sec. 8, challenge 2)"
    benchmarked: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not self.inner.tune:
            raise ValueError(f"{self.inner.name} has no tunable setting")
        check_between("tolerance", self.tolerance, 0.0, 1.0)
        if not self.candidates:
            object.__setattr__(self, "candidates", tuple(dict(c) for c in self.inner.tune))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name + SUFFIX

    @property
    def precisions(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.precisions

    def refusal(self, facts, arch: str) -> str | None:
        return self.inner.refusal(facts, arch)

    def unlabeled_request(self) -> tuple[str, int] | None:
        return self.inner.unlabeled_request()

    def candidate_defenses(self) -> list[Defense]:
        return [dataclasses.replace(self.inner, **settings) for settings in self.candidates]

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        fit, check, rule = data.selection_split(ctx.seed)
        fit_data = dataclasses.replace(data, clean=fit)
        original = copy.deepcopy(model)
        trials = []
        # every candidate sees the same draws; ANP and NC share their costly stage among them
        results = self.inner.run_candidates(self.candidates, original, fit_data, ctx)
        for (defended, _), settings in zip(results, self.candidates, strict=True):
            trials.append({"settings": settings, **clean_signals(defended, original, check, ctx.device, ctx.seed)})
        chosen = choose(trials, self.tolerance)
        if fit is data.clean:  # the candidate already saw all of D_m: it is the result
            defended, record = results[chosen]
        else:  # chosen on a held-out part: the chosen setting now uses all of D_m
            final_ctx = ctx.fresh()
            defended, record = self.candidate_defenses()[chosen](original, data, final_ctx), final_ctx.record
        ctx.report(**record, tuning={
            "chosen": self.candidates[chosen], "candidates": trials, "check": rule, "tolerance": self.tolerance,
            "rule": "the strongest candidate within the tolerance of the best check accuracy",
        })
        return defended

