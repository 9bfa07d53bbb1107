"""The survey's measures (Section 5.4).

ACC: accuracy on the clean test set.
ASR: accuracy on triggered test samples against the target label, over samples
     whose true label is not the target (those are omitted).
RA:  accuracy on the same triggered samples against their original labels.
ARR = (ACC_pre - ACC_post) / ACC_pre          (Eq. 41)
RDR = (ACC_pre - RA_post) / ACC_pre           (Eq. 42)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch import Tensor

from bd_core.attacks.base import Trigger
from bd_core.data.imageset import ImageSet
from bd_core.layout import channels_last
from bd_core.progress import Steps


@dataclass(frozen=True)
class Metrics:
    acc: float
    asr: float
    ra: float

    def as_dict(self, suffix: str = "") -> dict[str, float]:
        return {f"{k}{suffix}": v for k, v in asdict(self).items()}


def arr(acc_pre: float, acc_post: float) -> float:
    """Accuracy reduction ratio; lower is better, 0 means no clean accuracy lost."""
    return (acc_pre - acc_post) / acc_pre


def rdr(acc_pre: float, ra_post: float) -> float:
    """Recovery difference ratio; 0 means triggered inputs are classified as well as clean ones were."""
    return (acc_pre - ra_post) / acc_pre


@torch.inference_mode()
def predict(model: nn.Module, batches, device: torch.device | str, tick=None) -> Tensor:
    """Predicted classes, batch by batch, in channels_last memory format (1.2-1.75x faster
    convolutions on CPU, measured in bench/RESULTS.md); the model's own format is restored."""
    model.eval()
    out = []
    with channels_last(model):
        for x in batches:
            out.append(model(x.to(device).contiguous(memory_format=torch.channels_last)).argmax(1).cpu())
            if tick is not None:
                tick()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    test: ImageSet,
    trigger: Trigger,
    target: int,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Metrics:
    """ACC on the clean test set; ASR and RA on its triggered non-target samples.
    Without autograd, every batch through the fused trigger kernel; batches of 256 (at quick width
    on CPU, larger batches were slower: their activations leave the caches)."""
    mean, std = test.mean_std()
    images = test.images.to(device)
    keep = test.labels != target
    victims, truth = images[keep.to(device)], test.labels[keep]
    steps = -(-len(images) // batch_size) + -(-len(victims) // batch_size)
    with Steps(f"evaluating on {len(images)} test images", steps) as tick:
        clean = predict(model, (trigger.apply(b, None, mean, std) for b in images.split(batch_size)), device, tick)
        poisoned = predict(
            model,
            (
                trigger.apply(b, torch.ones(len(b), dtype=torch.bool, device=b.device), mean, std)
                for b in victims.split(batch_size)
            ),
            device,
            tick,
        )
    acc = (clean == test.labels).float().mean().item()
    asr = (poisoned == target).float().mean().item()
    ra = (poisoned == truth).float().mean().item()
    return Metrics(acc=acc, asr=asr, ra=ra)
