"""A learned distribution of patch triggers for a known target class, shared by MESA and
BAERASER (the two reviewed methods that model triggers generatively).

A small generator maps noise z to a size x size patch (all channels) that is stamped at the
assumed trigger location. It is trained so that stamped clean images reach the target with
probability at least beta (a hinge on log p_target, MESA's 'staircase' level), while a
nearest-neighbour entropy estimate of the generated patches is maximised, so that the
generator covers many valid triggers instead of one. (The papers estimate entropy with
MINE; the Kozachenko-Leonenko nearest-neighbour estimate used here is named in the docs.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.data.pixels import Pixels
from bd_core.train import optimize
from torch import Tensor

LOCATIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


def patch_origin(location: str, image: int, size: int) -> tuple[int, int]:
    if location not in LOCATIONS:
        raise ValueError(f"location must be one of {', '.join(LOCATIONS)}, got {location!r}")
    far = image - size
    return {
        "bottom-right": (far, far),
        "bottom-left": (far, 0),
        "top-right": (0, far),
        "top-left": (0, 0),
        "center": (far // 2, far // 2),
    }[location]


class PatchGenerator(nn.Module):
    def __init__(self, channels: int, size: int, noise: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.channels, self.size, self.noise = channels, size, noise
        self.net = nn.Sequential(
            nn.Linear(noise, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels * size * size),
        )

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z)).view(-1, self.channels, self.size, self.size)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        return self(torch.randn(n, self.noise, generator=generator).to(device))


# What MESA and BAERASER assume the defender knows, and its check
ASSUMES = "the attack's target class and trigger size/location (--set target=N trigger_size=S location=...)"


def check_assumptions(name: str, target: int, num_classes: int, size: int, image: int, location: str) -> None:
    if target < 0:
        raise ValueError(f"{name} assumes the defender knows the backdoor target class: pass --set target=N")
    if target >= num_classes:
        raise ValueError(f"target {target} is not a class of this dataset (0..{num_classes - 1})")
    if not 1 <= size <= image:
        raise ValueError(f"trigger_size must be in 1..{image}, got {size}")
    if location not in LOCATIONS:
        raise ValueError(f"location must be one of {', '.join(LOCATIONS)}, got {location!r}")


def stamp_patches(x: Tensor, patches: Tensor, origin: tuple[int, int]) -> Tensor:
    r, c = origin
    s = patches.shape[-1]
    out = x.clone()
    out[..., r : r + s, c : c + s] = patches
    return out


def nn_entropy(samples: Tensor) -> Tensor:
    """Kozachenko-Leonenko entropy estimate up to constants: mean log nearest-neighbour distance."""
    flat = samples.flatten(1)
    d = torch.cdist(flat, flat) + torch.eye(len(flat), device=flat.device) * 1e6
    return torch.log(d.min(1).values + 1e-8).mean()


@dataclass
class TriggerDistribution:
    generators: list[PatchGenerator]
    origin: tuple[int, int]
    success: list[float]  # target rate of each generator's samples on the defender's data

    def stamp(self, x: Tensor, g: torch.Generator) -> Tensor:
        """Stamp each image with a patch sampled from a randomly chosen generator (level)."""
        pick = torch.randint(len(self.generators), (len(x),), generator=g)
        patches = torch.empty(len(x), x.shape[1], *(2 * [self.generators[0].size]), device=x.device)
        for i, gen in enumerate(self.generators):
            rows = (pick == i).nonzero().squeeze(1)
            if len(rows):
                with torch.no_grad():
                    patches[rows.to(x.device)] = gen.sample(len(rows), g).to(x.device)
        return stamp_patches(x, patches, self.origin)


def fit_trigger_distribution(
    model: nn.Module,
    pixels: Pixels,
    target: int,
    size: int,
    location: str,
    levels: tuple[float, ...],
    entropy_weight: float,
    steps: int,
    batch: int,
    lr: float,
    g: torch.Generator,
    tick=lambda: None,
) -> TriggerDistribution:
    """One generator per staircase level beta; returns them with their measured success rates."""
    model.eval()
    origin = patch_origin(location, pixels.x.shape[-1], size)
    gens, success = [], []
    y_target = torch.full((batch,), target, dtype=torch.long, device=pixels.x.device)
    for beta in levels:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        gen = PatchGenerator(pixels.x.shape[1], size).to(pixels.x.device)
        opt = torch.optim.Adam(gen.parameters(), lr=lr)

        def random_images():  # one step of the generator is one "epoch": a batch drawn with replacement
            idx = torch.randint(len(pixels), (batch,), generator=g).to(pixels.x.device)
            return [(pixels.x[idx], y_target)]

        def generator_loss(x: Tensor, _y: Tensor, gen: PatchGenerator = gen, beta: float = beta) -> Tensor:
            patches = gen.sample(batch, g)
            log_p = F.log_softmax(model(pixels.normalize(stamp_patches(x, patches, origin))), 1)
            hinge = F.relu(torch.log(torch.tensor(beta)) - log_p[:, target]).mean()
            return hinge - entropy_weight * nn_entropy(patches)

        optimize(generator_loss, random_images, opt, epochs=steps, tick=tick)
        with torch.no_grad():
            stamped = stamp_patches(pixels.x, gen.sample(len(pixels), g), origin)
            success.append(float((model(pixels.normalize(stamped)).argmax(1) == y_target[:1]).float().mean()))
        gens.append(gen.eval())
    return TriggerDistribution(gens, origin, success)
