"""The fine-tuning loop shared by every defense that trains on the mitigation set."""

from __future__ import annotations

import torch.nn as nn
from bd_core.data import Augment, ImageSet
from bd_core.data.batches import clean_batches
from bd_core.train import StepFn, cross_entropy_step, fit

from bd_defenses.base import Context


def finetune(
    model: nn.Module,
    data: ImageSet,
    ctx: Context,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Augment | None = None,
    step: StepFn = cross_entropy_step,
    params: list[nn.Parameter] | None = None,
    description: str = "fine-tuning",
    after_step=None,
    schedule: str = "cosine",
) -> list[float]:
    """SGD (cosine, or a constant rate) over the mitigation set, augmented like the attack's
    training data, in the run's precision (ctx.precision: defenses whose training is this loop
    declare Defense.precisions = ("fp32", "bf16"))."""
    augment = augment if augment is not None else Augment.for_dataset(data.info)
    return fit(
        model,
        clean_batches(data, augment, ctx.device),
        len(data),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        seed=ctx.seed,
        device=ctx.device,
        step=step,
        params=params,
        description=description,
        after_step=after_step,
        schedule=schedule,
        precision=ctx.precision,
    )
