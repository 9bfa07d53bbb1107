"""One-off check behind docs/parity.md's FT-SAM row: does bd's image pipeline (its fused
crop/flip/normalise kernel, one seeded generator) shift FT-SAM's result against the pipeline the
survey's fork trains with (torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor, Normalize on PIL images, torch's global generator)? It runs `bd defend` unchanged,
except that FT-SAM's batches come from that torchvision pipeline; any `bd defend` arguments
work. The pair of the parity study (experiments/parity/parity.py keeps the images of each partition):

    python experiments/parity/parity_pipeline_check.py defend --model ../fork/parity/model.safetensors \\
        --defense ft-sam --partition 1001 --data-dir ../fork/BackdoorBenchmark/data/cifar10 \\
        --mitigation-indices ../fork/parity/runs/ft-sam/1/mitigation.txt --set epochs=20 \\
        --device cpu --format json

and the same command with `python -m bd_cli.app` in place of this script for bd's own
pipeline; --partition picks the seed (seed = attack seed + partition), the images stay the
indices file's.
"""

from __future__ import annotations

import sys

import bd_defenses.ftsam as ftsam
import torch
import torchvision.transforms as T
from bd_core.data.augment import Augment
from bd_core.data.imageset import ImageSet
from bd_core.train import BatchFn
from PIL import Image


def torchvision_batches(data: ImageSet, augment: Augment | None, device: str | torch.device = "cpu") -> BatchFn:
    """FT-SAM's make_batch with the fork's training transform in place of bd's kernel."""
    mean, std = (tuple(float(v) for v in t) for t in data.mean_std())
    size = tuple(data.images.shape[-2:])
    transform = T.Compose(
        [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )
    images = [Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()) for img in data.images]

    def make_batch(idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([transform(images[i]) for i in idx.tolist()]).to(device), data.labels[idx]

    return make_batch


if __name__ == "__main__":
    ftsam.clean_batches = torchvision_batches  # FT-SAM looks the name up when it runs
    from bd_cli.app import main

    sys.argv = ["bd", *sys.argv[1:]]
    main()
