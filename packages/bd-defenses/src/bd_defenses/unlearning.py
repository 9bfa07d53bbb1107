"""The unlearning step of the trigger-synthesis defenses NC and MESA (BTI-DBF and BAERASER
unlearn by their own objectives):
fine-tune on the mitigation set where a fraction of each batch carries a synthesized
trigger but keeps its true label, so the model learns to ignore the trigger."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from bd_core.data import ImageSet
from bd_core.data.pixels import Pixels
from bd_core.train import fit
from torch import Tensor

from bd_defenses.base import Context

Stamp = Callable[[Tensor, torch.Generator], Tensor]  # pixel images [N,C,H,W] in [0,1] -> triggered


def unlearn(
    model: nn.Module,
    data: ImageSet,
    ctx: Context,
    stamp: Stamp,
    *,
    ratio: float,
    epochs: int,
    lr: float,
    batch_size: int = 256,
    description: str = "unlearning",
) -> list[float]:
    """SGD + cosine on D_m with `ratio` of every batch stamped (true labels kept)."""
    pixels = Pixels.of(data, ctx.device)

    def partly_stamped(idx: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x = pixels.x[idx.to(ctx.device)].clone()
        n = int(round(ratio * len(idx)))
        if n:
            chosen = torch.randperm(len(idx), generator=g)[:n].to(x.device)
            x[chosen] = stamp(x[chosen], g).clamp(0, 1)
        return pixels.normalize(x), pixels.y[idx.to(ctx.device)]

    return fit(
        model,
        partly_stamped,
        len(data),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=ctx.seed,
        device=ctx.device,
        description=description,
    )
