"""The one training loop of bd: attacked models, clean reference models and every
defense that fine-tunes share it.

`fit` draws batches of row indices from a seeded generator, asks `make_batch`
for the (already poisoned, augmented, normalized) tensors and runs SGD with
cosine annealing. A training-controlled attack or a defense passes its own
`step` (loss of one batch) instead of plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bd_core.errors import InvalidRequest
from bd_core.progress import make_progress
from bd_core.threads import rebalance

BatchFn = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]
StepFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Recipe:
    """How an attacked model is trained. `width` and `train_limit` shrink the job for CPUs."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: float = 1.0  # channel multiplier of the architecture
    train_limit: int | None = None  # train on this many (stratified, seeded) training images

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InvalidRequest(f"recipe needs epochs >= 1, batch_size >= 1, lr > 0: {self}")


PRESETS: dict[str, Recipe] = {
    # BackdoorBench's attack recipe (config/attack/prototype): SGD 0.01, cosine, 100 epochs, batch 128
    "paper": Recipe(epochs=100, batch_size=128, lr=0.01),
    # sized for a 2-core CPU: quarter-width network, 20k images, 5 epochs (about 2 minutes)
    "quick": Recipe(epochs=5, batch_size=128, lr=0.05, width=0.25, train_limit=20_000),
}


def preset(name: str) -> Recipe:
    if name not in PRESETS:
        raise InvalidRequest(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def cross_entropy_step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def index_batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def fit(
    model: nn.Module,
    make_batch: BatchFn,
    n: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: torch.device | str = "cpu",
    step: StepFn = cross_entropy_step,
    params: list[nn.Parameter] | None = None,
    description: str = "training",
    after_step: Callable[[], None] | None = None,
    schedule: str = "cosine",
) -> list[float]:
    """SGD over `epochs` passes of `n` rows, its learning rate cosine-annealed over the run (or
    held constant: schedule="constant"); returns the mean loss per epoch."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', not {schedule!r}")
    if n < 1:
        raise InvalidRequest("cannot train on an empty set")
    model.to(device).train()
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if schedule == "cosine"
             else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    steps_per_epoch = -(-n // batch_size)
    with make_progress() as progress:
        task = progress.add_task(description, total=epochs * steps_per_epoch, status="")
        for epoch in range(epochs):
            total, count = 0.0, 0
            for idx in index_batches(n, batch_size, g):
                x, y = make_batch(idx, g)
                loss = step(model, x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:  # e.g. a projection the method applies after every update
                    after_step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {total / count:.3f}")
            sched.step()
            losses.append(total / count)
            rebalance()  # other bd processes may have started or ended: take this one's share again
    model.eval()
    return losses
