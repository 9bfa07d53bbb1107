"""SSBA (Li et al., ICCV 2021, "Invisible backdoor attack with sample-specific
triggers"): an encoder, trained as in StegaStamp to hide a bit string in an image so
that a decoder can read it back, embeds one fixed code into every poisoned image. The
additive residual it produces depends on the image (it hides the code in the image's
own structure), so every poisoned sample carries a different, invisible trigger.

bd trains the encoder/decoder itself on the attacked training set (BackdoorBench ships
pre-encoded images made by the ArtificialGANFingerprints variant of StegaStamp):
random codes per batch, bit cross-entropy on the decoded code, and an image L2 loss
that is switched on once the code is read back with 90 % bit accuracy and ramped up,
as in that code. The residual is bounded by `eps * tanh`, and the encoded image is
rounded to 8-bit pixels with a straight-through estimator, so what the decoder reads
in training is what a stored poisoned image holds. The trained encoder and the code
are cached per dataset and saved with the attacked model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bd_core.attacks.base import Attack, PixelTrigger, trigger_kind
from bd_core.attacks.networks import EncoderDecoder, load_module_tensors, module_tensors
from bd_core.data.imageset import ImageSet
from bd_core.train import optimize


class CodeEncoder(nn.Module):
    """(image in 0..1, code bits) -> residual bounded by eps. The code enters as a dense map
    upsampled to the image (StegaStamp), concatenated with the image, through a small U-Net."""

    def __init__(self, channels: int, size: int, code_bits: int, eps: float, base: int = 16) -> None:
        super().__init__()
        self.channels, self.size, self.eps = channels, size, eps
        self.code_side = size // 4
        self.code_map = nn.Linear(code_bits, channels * self.code_side**2)
        self.unet = EncoderDecoder(2 * channels, channels, base, depth=2, skips=True)

    def forward(self, images: Tensor, code: Tensor) -> Tensor:
        m = F.relu(self.code_map(code)).view(-1, self.channels, self.code_side, self.code_side)
        m = F.interpolate(m, size=(self.size, self.size), mode="nearest")
        return self.eps * torch.tanh(self.unet(torch.cat([images, m.expand(len(images), -1, -1, -1)], 1)))


class CodeDecoder(nn.Module):
    """Encoded image -> code logits: strided convolutions, then a dense layer."""

    def __init__(self, channels: int, size: int, code_bits: int, base: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, base, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(base, base, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(base, 2 * base, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * base, 2 * base, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        side = -(-size // 8)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * base * side * side, 256), nn.ReLU(inplace=True), nn.Linear(256, code_bits)
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def to_pixels(x: Tensor) -> Tensor:
    """Round 0..1 images to 8-bit levels; the gradient passes straight through."""
    return x + ((x * 255).round() / 255 - x).detach()


@trigger_kind("ssba")
@dataclass
class SSBATrigger(PixelTrigger):
    """Poisoned rows get the encoder's residual for the fixed code, rounded to uint8."""

    encoder: CodeEncoder
    code: Tensor  # [code_bits] of 0/1

    @torch.no_grad()
    def poison_pixels(self, images: Tensor) -> Tensor:
        self.encoder.to(images.device).eval()
        x = images.to(torch.get_default_dtype()) / 255
        residual = self.encoder(x, self.code.to(images.device, torch.get_default_dtype()).unsqueeze(0))
        return ((x + residual).clamp(0, 1) * 255).round().to(torch.uint8)

    def artifacts(self) -> dict[str, Tensor]:
        return {**module_tensors("encoder", self.encoder), "code": self.code.contiguous()}

    def settings(self) -> dict[str, Any]:
        e = self.encoder
        return {"kind": self.kind, "channels": e.channels, "size": e.size, "code_bits": len(self.code), "eps": e.eps}

    @classmethod
    def from_saved(cls, artifacts, settings) -> SSBATrigger:
        encoder = CodeEncoder(
            int(settings["channels"]), int(settings["size"]), int(settings["code_bits"]), float(settings["eps"])
        )
        code = artifacts["code"]
        if code.shape != (int(settings["code_bits"]),):
            raise ValueError(f"code has shape {tuple(code.shape)}, expected ({settings['code_bits']},)")
        return cls(load_module_tensors(encoder, artifacts, "encoder"), code)


@dataclass(frozen=True)
class SSBA(Attack):
    name = "ssba"
    paper = "Li et al., Invisible Backdoor Attack with Sample-Specific Triggers (ICCV 2021)"
    cache_trigger = True
    preset_settings = {"quick": {"code_bits": 32, "steps": 1500, "l2_ramp": 300}}
    code_bits: int = 100  # StegaStamp / BackdoorBench fingerprint length
    eps: float = 0.1  # L-infinity bound of the residual on the 0..1 scale
    steps: int = 15_000  # encoder/decoder training steps (BackdoorBench: 20 epochs at batch 64)
    batch_size: int = 64
    lr: float = 1e-3
    l2_weight: float = 10.0
    l2_ramp: int = 3000  # steps over which the L2 weight rises once bits are read back

    def __post_init__(self) -> None:
        if self.code_bits < 1 or not 0 < self.eps <= 1 or self.steps < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError(f"invalid SSBA settings: {self}")

    def fit(self, train: ImageSet, seed: int, target: int = 0) -> SSBATrigger:
        if train.image_size % 4:
            raise ValueError(f"SSBA's encoder needs an image side divisible by 4, got {train.image_size}")
        torch.manual_seed(seed)
        encoder = CodeEncoder(train.channels, train.image_size, self.code_bits, self.eps)
        decoder = CodeDecoder(train.channels, train.image_size, self.code_bits)
        self.train_codec(encoder, decoder, train, torch.Generator().manual_seed(seed))
        code = torch.randint(0, 2, (self.code_bits,), generator=torch.Generator().manual_seed(seed + 1))
        return SSBATrigger(encoder.eval(), code.to(torch.uint8))

    def train_codec(self, encoder: CodeEncoder, decoder: CodeDecoder, train: ImageSet, g: torch.Generator) -> float:
        """StegaStamp training; returns the final bit accuracy."""
        opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=self.lr)
        state = {"step": 0, "ramp_start": None, "bit_acc": 0.0}

        def random_images_and_codes():  # one step is one "epoch" of the loop: a fresh random batch
            rows = torch.randint(0, len(train), (self.batch_size,), generator=g)
            x = train.images[rows].to(torch.get_default_dtype()) / 255
            code = torch.randint(0, 2, (self.batch_size, self.code_bits), generator=g)
            return [(x, code.to(x.dtype))]

        def decodable_and_invisible(x: Tensor, code: Tensor) -> Tensor:
            encoded = to_pixels((x + encoder(x, code)).clamp(0, 1))
            logits = decoder(encoded)
            state["bit_acc"] = ((logits > 0).float() == code).float().mean().item()
            # the image loss is ramped in once the code is readable (StegaStamp's schedule)
            ramp = state["ramp_start"]
            weight = 0.0 if ramp is None else self.l2_weight * min(1.0, (state["step"] - ramp) / self.l2_ramp)
            return F.binary_cross_entropy_with_logits(logits, code) + weight * F.mse_loss(encoded, x)

        def count_and_start_ramp(_epoch: int) -> None:
            if state["ramp_start"] is None and state["bit_acc"] > 0.9:
                state["ramp_start"] = state["step"]
            state["step"] += 1

        encoder.train()
        optimize(
            decodable_and_invisible,
            random_images_and_codes,
            opt,
            epochs=self.steps,
            model=decoder,
            after_epoch=count_and_start_ramp,
            description="SSBA: training the code encoder",
        )
        bit_acc = state["bit_acc"]
        return bit_acc
