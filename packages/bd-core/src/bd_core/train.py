"""The one optimisation loop of bd, and the training recipe built on it.

`optimize` is the loop: for each epoch it sets the model's mode, takes the epoch's batches,
asks `step` for the loss of each (the step may run an inner maximisation first), and updates
with the given optimizer, with hooks before and after each update and at the end of each epoch
(progress, the scheduler, the mean loss and the machine's thread share are handled here once).
Defenses that learn masks, perturbations, triggers or a fine-tuned model call it with their own
optimizer and step.

`fit` is the recipe of attack training and of fine-tuning: batches of row indices from a seeded
generator, `make_batch` for the (already poisoned, augmented, normalized) tensors, SGD with
cosine annealing. A training-controlled attack or a defense passes its own `step`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bd_core import layout
from bd_core.errors import Diverged, InvalidRequest
from bd_core.progress import make_progress
from bd_core.threads import rebalance

BatchFn = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]
StepFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

# The arithmetic a training loop may run in: "fp32", or "bf16": convolutions and matrix products
# in bfloat16 under torch.autocast (`fit` also switches to channels_last); parameters, optimizer
# state and BatchNorm statistics stay fp32. On CPUs with AMX or AVX-512-BF16 oneDNN runs bf16
# convolutions several times faster; elsewhere it emulates them (slower than fp32).
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidRequest(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def in_precision(
    step: Callable[[Tensor, Tensor], Tensor], precision: str, device: torch.device | str | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """`step` under autocast when precision is bf16: its forward passes, and any inner
    maximisation it runs with its own backward passes (FT-SAM's ascent); the loop's backward
    pass after it follows the dtypes autocast chose."""
    check_precision(precision)
    if precision == "fp32":
        return step
    device_type = torch.device(device).type if device is not None else "cpu"

    def autocast_step(x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return step(x, y)

    return autocast_step


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
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw" (transformers: bd_core.models.TRAINING_CHANGES)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InvalidRequest(f"recipe needs epochs >= 1, batch_size >= 1, lr > 0: {self}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidRequest(f"recipe optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")

    def config(self) -> dict:
        """The recipe as stored in a model's config (and hashed into its key). The default
        optimizer is left out, so the keys of models trained before the field existed hold."""
        values = dataclasses.asdict(self)
        if values["optimizer"] == "sgd":
            del values["optimizer"]
        return values


OPTIMIZERS = ("sgd", "adamw")


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


def shuffled_batches(
    make_batch: BatchFn, n: int, batch_size: int, generator: torch.Generator
) -> Callable[[], Iterable[tuple[Tensor, Tensor]]]:
    """One epoch's batches for `optimize`: a fresh permutation of the `n` rows each epoch, each
    batch of row indices turned into tensors by `make_batch` as it is reached."""
    return lambda: (make_batch(idx, generator) for idx in index_batches(n, batch_size, generator))


def optimize(
    step: Callable[[Tensor, Tensor], Tensor],
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    model: nn.Module | None = None,
    training: bool = True,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str | None = None,
    before_update: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    after_epoch: Callable[[int], bool | None] | None = None,
    description: str = "optimising",
    steps_per_epoch: int | None = None,
    tick: Callable[[], None] | None = None,
    precision: str = "fp32",
) -> list[float]:
    """Minimise `step(x, y)` over `epochs` passes of `batches()` with `optimizer`; returns the mean
    loss per epoch. Gradients are zeroed before each step: a step that runs an inner
    maximisation or backwards part of its objective itself leaves the gradients it wants kept;
    a step that computes its gradients another way (i-BAU's implicit hypergradient) sets them
    and returns its loss detached.

    model/training: the module put in train (or eval) mode at the start of every epoch.
    scheduler: stepped once per epoch, after its last update.
    before_update: runs between the backward pass and the optimizer step (gradient clipping,
    restoring weights a step perturbed). after_step: after every update (projections, clipping).
    after_epoch(epoch): after every epoch (1-based); returning True stops the run early.
    steps_per_epoch: when known, progress advances per batch instead of per epoch.
    tick: advance a caller's progress bar once per epoch instead of showing one's own (a
    defense whose phases alternate, each phase one call, keeps one bar for the whole run).
    precision: "bf16" runs `step` under autocast (in_precision; see PRECISIONS).
    """
    losses: list[float] = []
    step = in_precision(step, precision, device)
    with nullcontext(None) if tick is not None else make_progress() as progress:
        task = (
            progress.add_task(description, total=epochs * (steps_per_epoch or 1), status="")
            if progress is not None
            else None
        )
        for epoch in range(1, epochs + 1):
            if model is not None:
                model.train(training)
            total, count = 0.0, 0
            for batch_number, (x, y) in enumerate(batches(), 1):
                if device is not None:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = step(x, y)  # a step may backward a part of its loss itself; gradients add up
                if loss.requires_grad:  # else the step set the gradients itself (an implicit hypergradient)
                    loss.backward()
                if before_update is not None:
                    before_update()
                optimizer.step()
                if after_step is not None:
                    after_step()
                value = float(loss.detach())  # the loop reads every loss anyway (its mean per epoch)
                if not math.isfinite(value):
                    raise Diverged(
                        f"{description} diverged: the loss became {value} at epoch {epoch}, batch "
                        f"{batch_number}; lower its learning rate (or step size)"
                    )
                total += value * len(y)
                count += len(y)
                if steps_per_epoch and progress is not None:
                    progress.update(task, advance=1, status=f"epoch {epoch}/{epochs} loss {total / count:.3f}")
            if scheduler is not None:
                scheduler.step()
            losses.append(total / max(1, count))
            if tick is not None:
                tick()
            elif not steps_per_epoch:
                progress.update(task, advance=1, status=f"epoch {epoch}/{epochs} loss {losses[-1]:.3f}")
            rebalance()  # other bd processes may have started or ended: take this one's share again
            if after_epoch is not None and after_epoch(epoch):
                break
    return losses


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
    optimizer: str = "sgd",
    channels_last: bool = False,
    precision: str = "fp32",
) -> list[float]:
    """SGD with momentum (or AdamW: optimizer="adamw") over `epochs` passes of `n` rows, its
    learning rate cosine-annealed over the run (or held constant: schedule="constant");
    returns the mean loss per epoch. channels_last: train in that layout (faster convolutions
    on CPU; the model is handed back in the default layout). precision: see PRECISIONS (bf16
    implies channels_last)."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', not {schedule!r}")
    check_precision(precision)
    channels_last = channels_last or precision == "bf16"
    if n < 1:
        raise InvalidRequest("cannot train on an empty set")
    model.to(device).train()
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if optimizer == "adamw"
        else torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    )
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        if schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    )
    if channels_last:
        make_batch = _in_channels_last(make_batch)
    batches = shuffled_batches(make_batch, n, batch_size, torch.Generator().manual_seed(seed))
    with layout.channels_last(model) if channels_last else nullcontext():
        losses = optimize(
            lambda x, y: step(model, x, y),
            batches,
            opt,
            epochs=epochs,
            model=model,
            scheduler=sched,
            device=device,
            after_step=after_step,
            description=description,
            steps_per_epoch=-(-n // batch_size),
            precision=precision,
        )
    model.eval()
    return losses


def _in_channels_last(make_batch: BatchFn) -> BatchFn:
    def make(idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = make_batch(idx, generator)
        return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), y

    return make
