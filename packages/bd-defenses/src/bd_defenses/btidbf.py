"""BTI-DBF(U), backdoor trigger inversion via decoupling benign features, unlearning variant
(Xu et al., ICLR 2024), as the survey's fork runs it.

A UNet generator G is pretrained to reproduce clean images (same features and predictions).
Each round: (1) a mask on the penultimate feature map is learned so that masked features
keep the prediction and the complement loses it (the benign features); (2) G is trained to
change the complement (backdoor) features while keeping the benign ones and staying close
to the input (MSE <= norm_bound, benign feature MSE <= feat_bound); from round 2 on, G is
also pushed toward the label the first round detected; (3) the classifier is fine-tuned on
batches where 10 % (+1) of the images pass through G, with their true labels and a feature
consistency term. Defaults: 5 rounds of 20 mask, 30 generator and 30 unlearning epochs,
50 pretraining epochs, Adam lr 1e-3 (G) and 1e-4 (classifier), batch 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from bd_core.config import setting
from bd_core.data.batches import clean_batches
from bd_core.data.pixels import Pixels, epoch_batches
from bd_core.progress import Steps
from bd_core.train import optimize, shuffled_batches
from torch import Tensor

from bd_defenses.base import Context, Defense, MitigationData
from bd_defenses.pixels import clamp_between
from bd_defenses.registry import register


class UNet(nn.Module):
    """A small UNet: `depth` down/up levels with skips; the output is added to the input
    (a residual generator starts near the identity)."""

    def __init__(self, channels: int, base: int = 32, depth: int = 3) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, padding=1),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
            )

        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [block(channels, widths[0])] + [block(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList([block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        h = x
        for i, blk in enumerate(self.down):
            h = blk(h if i == 0 else F.max_pool2d(h, 2, ceil_mode=True))
            skips.append(h)
        for blk, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = blk(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return x + self.out(h)


@register(
    "bti-dbf",
    family="synthesis",
    paper="Xu et al., Towards Reliable and Efficient Backdoor Trigger Inversion "
    "via Decoupling Benign Features (ICLR 2024)",
    aliases=("btidbf", "btidbf-u"),
)
@dataclass(frozen=True)
class BTIDBF(Defense):
    rounds: int = setting(5, 1, 100_000)
    pretrain_epochs: int = setting(50, 1, 100_000)
    mask_epochs: int = setting(20, 1, 100_000)
    generator_epochs: int = setting(30, 1, 100_000)
    unlearn_epochs: int = setting(30, 1, 100_000)
    gen_lr: float = setting(1e-3, above=0, high=1)
    cls_lr: float = setting(1e-4, above=0, high=1)
    norm_bound: float = setting(0.3, above=0, high=1000)
    feat_bound: float = setting(3.0, above=0, high=1000)
    batch_size: int = setting(128, 1, 1_000_000)
    base_filters: int = setting(32, 1, 4096)

    def __call__(self, model: nn.Module, data: MitigationData, ctx: Context) -> nn.Module:
        pixels = Pixels.of(data.clean, ctx.device)
        low, high = pixels.bounds()
        g = ctx.generator(14)
        torch.manual_seed(ctx.seed)
        gen = UNet(pixels.x.shape[1], self.base_filters).to(ctx.device)
        generate = lambda xn: clamp_between(gen(xn), low, high)  # noqa: E731
        opt_g = torch.optim.Adam(gen.parameters(), lr=self.gen_lr)
        opt_cls = torch.optim.Adam(model.parameters(), lr=self.cls_lr)
        total = self.pretrain_epochs + self.rounds * (self.mask_epochs + self.generator_epochs + self.unlearn_epochs)
        detected, flips = None, []
        with Steps("BTI-DBF trigger inversion + unlearning", total) as tick:
            model.eval()

            def pretrain_loss(x: Tensor, _y: Tensor) -> Tensor:
                """The generator starts as a near-identity that keeps the model's features and outputs."""
                xn = pixels.normalize(x)
                with torch.no_grad():
                    feat = model.forward_features(xn)
                    out = model.forward_head(feat)
                fake = generate(xn)
                fake_feat = model.forward_features(fake)
                norm = F.mse_loss(fake, xn)
                loss = F.cross_entropy(model.forward_head(fake_feat), out.softmax(1)) + F.mse_loss(fake_feat, feat)
                return loss + (100 if norm > 0.1 else 0.01) * norm

            optimize(
                pretrain_loss, epoch_batches(pixels, self.batch_size, g), opt_g, epochs=self.pretrain_epochs, tick=tick
            )
            for r in range(self.rounds):
                mask = self.benign_mask(model, pixels, g, tick)
                self.train_generator(model, gen, generate, opt_g, pixels, mask, detected, g, tick)
                if r == 0:
                    detected = self.detected_label(model, generate, pixels)
                flips.append(self.flip_rate(model, generate, pixels))
                self.unlearn(model, generate, opt_cls, data, ctx, g, tick)
        model.eval()
        ctx.report(detected_target=detected, generated_flip_rate_per_round=[round(v, 4) for v in flips])
        return model

    def benign_mask(self, model, pixels: Pixels, g, tick) -> Tensor:
        """A soft feature mask that keeps the features the true class needs (the benign ones)."""
        with torch.no_grad():
            shape = model.forward_features(pixels.normalize(pixels.x[:1])).shape
        raw = torch.randn(shape, generator=g).to(pixels.x.device).requires_grad_(True)
        model.eval()

        def loss(x: Tensor, y: Tensor) -> Tensor:
            m = torch.tanh(raw) / 2 + 0.5
            with torch.no_grad():
                feat = model.forward_features(pixels.normalize(x))
            return F.cross_entropy(model.forward_head(m * feat), y) - F.cross_entropy(
                model.forward_head((1 - m) * feat), y
            )

        optimize(
            loss,
            epoch_batches(pixels, self.batch_size, g),
            torch.optim.Adam([raw], lr=0.01),
            epochs=self.mask_epochs,
            tick=tick,
        )
        return (torch.tanh(raw) / 2 + 0.5).detach()

    def train_generator(self, model, gen, generate, opt_g, pixels, mask, detected, g, tick) -> None:
        """The generator keeps the benign features and moves the others as far as the bounds allow."""
        model.eval()

        def loss(x: Tensor, _y: Tensor) -> Tensor:
            xn = pixels.normalize(x)
            fake = generate(xn)
            with torch.no_grad():
                feat = model.forward_features(xn)
            fake_feat = model.forward_features(fake)
            benign = F.mse_loss(mask * feat, mask * fake_feat)
            backdoor = F.mse_loss((1 - mask) * feat, (1 - mask) * fake_feat)
            norm = F.mse_loss(fake, xn)
            out = norm if (norm > self.norm_bound or benign > self.feat_bound) else -backdoor + 0.01 * benign
            if detected is not None:
                out = out + F.cross_entropy(
                    model.forward_head(fake_feat), torch.full_like(x[:, 0, 0, 0], detected, dtype=torch.long)
                )
            return out

        optimize(
            loss, epoch_batches(pixels, self.batch_size, g), opt_g, epochs=self.generator_epochs, model=gen, tick=tick
        )
        gen.eval()  # its BN statistics are fixed while it generates for detection and unlearning

    @torch.no_grad()
    def detected_label(self, model, generate, pixels: Pixels) -> int:
        """The class the generated images are sent to most often (the inverted target)."""
        preds = model(generate(pixels.normalize(pixels.x))).argmax(1)
        return int(torch.bincount(preds, minlength=int(pixels.y.max()) + 1).argmax())

    @torch.no_grad()
    def flip_rate(self, model, generate, pixels: Pixels) -> float:
        xn = pixels.normalize(pixels.x)
        return float((model(generate(xn)).argmax(1) != model(xn).argmax(1)).float().mean())

    def unlearn(self, model, generate, opt_cls, data: MitigationData, ctx: Context, g, tick) -> None:
        """Train the model to classify images the generator changed (10 % of each batch) correctly."""
        make_batch = clean_batches(data.clean, data.augment(), ctx.device)  # augmented, as the authors' loader

        def loss(xn: Tensor, y: Tensor) -> Tensor:
            pick = torch.randperm(len(y), generator=g)[: int(0.1 * len(y) + 1)].to(xn.device)
            mixed = xn.clone()
            with torch.no_grad():
                mixed[pick] = generate(xn[pick])
            feat, mixed_feat = model.forward_features(xn), model.forward_features(mixed)
            return F.cross_entropy(model.forward_head(mixed_feat), y) + F.mse_loss(feat, mixed_feat)

        optimize(
            loss,
            shuffled_batches(make_batch, len(data.clean), self.batch_size, g),
            opt_cls,
            epochs=self.unlearn_epochs,
            model=model,
            device=ctx.device,
            tick=tick,
        )
        model.eval()
