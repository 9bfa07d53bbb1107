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
before the setting acts (ANP's masks, NC's reversed triggers), which they then share. A candidate
judged on a held-out part is kept on disk once finished (`TrialLog`: its settings and signals,
not its model, which only the check needed), so a unit stopped part way (a session's
end, a device call's time limit) resumes after its finished candidates.
A `Tuned` defense sees exactly what any defense sees (`MitigationData`, `Context`): no test
image and no trigger can reach the selection, by construction.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data import Augment, ImageSet
from bd_core.data.batches import augmented_batch
from bd_core.data.pixels import Pixels
from bd_core.progress import log as say

from bd_defenses.base import Context, Defense, MitigationData

SUFFIX = "/tuned"  # how a tuned defense is named in results and reports: clp/tuned


def global_rng_state() -> dict[str, Any]:
    """torch's global generators (CPU, and every CUDA device in use) as JSON-able text."""
    state: dict[str, Any] = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


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
    augmented = augmented_batch(
        check.images.to(device), Augment.for_dataset(check.info), torch.Generator().manual_seed(seed), mean, std
    )
    probs = model(augmented).softmax(1)
    agreement = (probs.argmax(1) == original(augmented).argmax(1)).float().mean()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()
    return {
        "acc": round(float(acc), 4),
        "loss": round(float(loss), 4),
        "agreement": round(float(agreement), 4),
        "entropy": round(float(entropy), 4),
        "confidence": round(float(probs.max(1).values.mean()), 4),
    }


def settings_text(settings: dict[str, Any]) -> str:
    """`{"trigger_norm": 0.2}` as `trigger_norm=0.2`, for log lines."""
    return " ".join(f"{k}={v}" for k, v in settings.items())


def choose(signals: list[dict[str, float]], tolerance: float) -> int:
    """Index of the strongest candidate (the last) whose accuracy is within `tolerance` of the best."""
    best = max(s["acc"] for s in signals)
    return max(i for i, s in enumerate(signals) if s["acc"] >= best - tolerance)


class TrialLog:
    """The finished candidates of one tuned unit, one small JSON file each under `folder` (the
    unit's own: `Context.trials`). A file is named by a digest of everything its result depends
    on beyond the unit (the candidate's full settings, device, precision, seed), so a changed
    setting never resumes from it; an unreadable file counts as not finished."""

    KEYS = ("settings", "signals", "rng")

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, candidate: Defense, ctx: Context) -> Path:
        what = json.dumps([repr(candidate), ctx.device, ctx.precision, ctx.seed])
        return self.folder / f"{hashlib.sha256(what.encode()).hexdigest()[:20]}.json"

    def load(self, candidate: Defense, ctx: Context) -> dict[str, Any] | None:
        try:
            trial = json.loads(self.path(candidate, ctx).read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(trial, dict) and set(trial) == set(self.KEYS)
        return trial if ok and all(isinstance(trial[k], dict) for k in self.KEYS) else None

    def save(self, candidate: Defense, ctx: Context, trial: dict[str, Any]) -> None:
        path = self.path(candidate, ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: trial[k] for k in self.KEYS}, default=str))
        os.replace(tmp, path)  # whole or absent: a stop mid-write leaves no half file

    def clear(self) -> None:
        for path in self.folder.glob("*.json"):
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


@dataclass(frozen=True)
class Tuned(Defense):
    """`inner` with its decisive setting chosen from `inner.tune` by the defender's signals."""

    inner: Defense
    tolerance: float = setting(0.02, 0, 1)  # accuracy a stronger candidate may lose against the best one
    # the settings tried, mildest first: `inner.tune` unless given; part of the stored config, so
    # a result made with other candidates is never taken for this one
    candidates: tuple[dict[str, Any], ...] = ()

    family: ClassVar[str] = "tuned"
    paper: ClassVar[str] = "defender-only selection of the decisive setting (survey Sec. 8, challenge 2)"
    benchmarked: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.inner.tune:
            raise ValueError(f"{self.inner.name} has no tunable setting")
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
        say(
            f"tuning {self.inner.name}: {len(self.candidates)} candidates "
            f"({', '.join(settings_text(c) for c in self.candidates)}), checked on {rule}"
        )
        if fit is data.clean:  # the candidate already saw all of D_m: the chosen one is the result
            results = self.inner.run_candidates(self.candidates, original, fit_data, ctx)
            trials = [
                {"settings": settings, **clean_signals(defended, original, check, ctx.device, ctx.seed)}
                for (defended, _), settings in zip(results, self.candidates, strict=True)
            ]
            chosen = choose(trials, self.tolerance)
            defended, record = results[chosen]
            resumed = 0
        else:  # chosen on a held-out part: the chosen setting then uses all of D_m
            log = TrialLog(ctx.trials) if ctx.trials is not None else None
            trials, resumed = self.checked_candidates(original, fit_data, check, ctx, log)
            chosen = choose(trials, self.tolerance)
            say(
                f"tuning {self.inner.name}: chose {settings_text(self.candidates[chosen])}; "
                f"running it on all {len(data.clean)} images"
            )
            final_ctx = ctx.fresh()
            defended, record = self.candidate_defenses()[chosen](original, data, final_ctx), final_ctx.record
            if log is not None:
                log.clear()
        ctx.report(
            **record,
            tuning={
                "chosen": self.candidates[chosen],
                "candidates": trials,
                "check": rule,
                "tolerance": self.tolerance,
                "rule": "the strongest candidate within the tolerance of the best check accuracy",
                **({"resumed_candidates": resumed} if resumed else {}),
            },
        )
        return defended

    def checked_candidates(
        self, original: nn.Module, fit: MitigationData, check: ImageSet, ctx: Context, log: TrialLog | None
    ) -> tuple[list[dict[str, Any]], int]:
        """Each candidate's settings and signals on `check` (fitted on `fit`), in candidate order,
        and how many came from `log`. Those sharing a costly first stage (ANP, NC) run together,
        the others one at a time, each kept once finished. A resumed run gives what an unstopped
        one gives: each kept candidate carries torch's global generator state after it (ANP
        draws its random starts from it), restored before whatever ran next."""
        defenses = self.candidate_defenses()
        kept = [log.load(d, ctx) if log is not None else None for d in defenses]
        loaded = [trial is not None for trial in kept]
        if self.inner.shares_first_stage(self.candidates):
            groups = [list(range(len(defenses)))] if None in kept else []  # one shared stage: all or none
        else:
            groups = [[i] for i, trial in enumerate(kept) if trial is None]
        resumed = len(defenses) - sum(len(g) for g in groups)
        if resumed:  # only a TrialLog resumes candidates
            say(
                f"tuning {self.inner.name}: {resumed} of {len(defenses)} candidates kept from an earlier run "
                f"({log.folder})"
            )
        for group in groups:
            say(
                f"tuning {self.inner.name}: candidate {', '.join(str(i + 1) for i in group)} of {len(defenses)}: "
                f"{', '.join(settings_text(self.candidates[i]) for i in group)} on {len(fit.clean)} images"
            )
            if group[0] > 0 and loaded[group[0] - 1]:  # the generator as that kept candidate left it
                restore_global_rng(kept[group[0] - 1]["rng"])
            results = self.inner.run_candidates(tuple(self.candidates[i] for i in group), original, fit, ctx)
            for i, (defended, _) in zip(group, results, strict=True):
                signals = clean_signals(defended, original, check, ctx.device, ctx.seed)
                kept[i] = {"settings": self.candidates[i], "signals": signals, "rng": global_rng_state()}
                if log is not None:
                    log.save(defenses[i], ctx, kept[i])
                say(
                    f"tuning {self.inner.name}: candidate {i + 1} ({settings_text(self.candidates[i])}): check "
                    f"accuracy {signals['acc']:.4f}, agreement {signals['agreement']:.4f}"
                    f"{', kept' if log is not None else ''}"
                )
        if loaded[-1] and not any(len(defenses) - 1 in g for g in groups):  # the last candidate was kept
            restore_global_rng(kept[-1]["rng"])
        return [{"settings": t["settings"], **t["signals"]} for t in kept], resumed
