"""Combined defenses (`--defense bnp+ft`): several defenses applied in sequence, each to the model
the previous one returned, all with the same mitigation data and context seed.

The survey closes with combining complementary assumptions as an open challenge (Sec. 8, item 4):
a pruning method that removes the channels it suspects, followed by a fine-tuning method that
repairs what pruning cost. A combination is stored and reported as one defense named by its
parts in order; each part keeps its own defaults, overridden as `part.key=value`
(`--set ft.epochs=5`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.tuning import TrialLog

SEPARATOR = "+"


@dataclass(frozen=True)
class Combined(Defense):
    parts: tuple[Defense, ...]

    family: ClassVar[str] = "combined"
    paper: ClassVar[str] = "a sequence of the defenses named (survey Sec. 8: combining assumptions)"
    benchmarked: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.parts) < 2:
            raise ValueError(f"a combined defense needs at least two parts, got {len(self.parts)}")

    @property
    def name(self) -> str:  # type: ignore[override]  # an instance's name: its parts in order
        return SEPARATOR.join(p.name for p in self.parts)

    @property
    def needs(self) -> str:  # type: ignore[override]
        return "; ".join(f"{p.name}: {p.needs}" for p in self.parts if p.needs)

    @property
    def precisions(self) -> tuple[str, ...]:  # type: ignore[override]  # what every part can run in
        return tuple(p for p in self.parts[0].precisions if all(p in part.precisions for part in self.parts))

    def refusal(self, facts, arch: str) -> str | None:
        return next((line for line in (p.refusal(facts, arch) for p in self.parts) if line), None)

    def unlabeled_request(self) -> tuple[str, int] | None:
        """The parts' requests; every part that asks for unlabeled data must ask for the same."""
        requests = {r for r in (p.unlabeled_request() for p in self.parts) if r is not None}
        if len(requests) > 1:
            raise ValueError(f"the parts of {self.name} ask for different unlabeled data: {sorted(requests)}")
        return next(iter(requests), None)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        # Every part sees the context seed a single run of it would see, so the first part's
        # output is exactly its standalone result and differences come from the sequence alone.
        steps = []
        for index, part in enumerate(self.parts):
            # a tuned part keeps its finished candidates apart from the other parts'
            trials = ctx.trials / f"part{index}" if ctx.trials is not None else None
            part_ctx = Context(device=ctx.device, seed=ctx.seed, precision=ctx.precision, trials=trials)
            started = time.perf_counter()
            model = part(model, data, part_ctx)
            steps.append({"defense": part.name, "seconds": round(time.perf_counter() - started, 3), **part_ctx.record})
        ctx.report(components=[p.name for p in self.parts], steps=steps)
        if ctx.trials is not None:
            TrialLog(ctx.trials).clear()  # the parts' own folders are gone: every tuned part finished
        return model
