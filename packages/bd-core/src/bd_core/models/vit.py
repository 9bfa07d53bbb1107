"""A small Vision Transformer for 28-64 px inputs (Dosovitskiy et al., 2021), from torchvision's
own encoder: 4x4 patches embedded by a strided conv, learned position embeddings, pre-norm
transformer blocks (multi-head self-attention, GELU MLP) and a final LayerNorm.

Two choices differ from torchvision's ImageNet ViT, both standard for small images (Beyer et
al., "Better plain ViT baselines", 2022): no class token, the tokens are globally average-pooled
instead; and the width is ViT-Tiny's (192, 3 heads) times bd's width multiplier, over 6 blocks.
Pooling the tokens keeps bd's model contract: `forward_features` returns the encoded tokens laid
out as the patch grid, [N, D, H/4, W/4], exactly what a CNN's global pooling receives, so the
defenses that work on features (FP, FST, BTI-DBF, ...) apply unchanged. The model has no
BatchNorm and one conv (the patch embedding): defenses whose criterion needs those refuse it
(`bd_defenses` checks `ModelFacts.layer_types`)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor
from torchvision.models.vision_transformer import Encoder

from bd_core.models.contract import BdModel, ModelFacts

PATCH = 4
HEADS = 3  # ViT-Tiny's
DEPTH = 6
TINY_WIDTH = 192


class ViT(BdModel):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, image_size: int = 32) -> None:
        super().__init__()
        if image_size % PATCH:
            raise ValueError(f"vit needs an image size divisible by its patch size {PATCH}, got {image_size}")
        self.grid, self.input_size = image_size // PATCH, image_size
        hidden = max(1, round(TINY_WIDTH * width / HEADS)) * HEADS
        self.conv_proj = nn.Conv2d(in_channels, hidden, PATCH, PATCH)
        self.encoder = Encoder(
            seq_length=self.grid**2,
            num_layers=DEPTH,
            num_heads=HEADS,
            hidden_dim=hidden,
            mlp_dim=4 * hidden,
            dropout=0.0,
            attention_dropout=0.0,
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(hidden, num_classes)

    facts = ModelFacts(
        pool="avgpool",
        classifier="head",
        last_conv=None,
        polarizer_before=None,
        stages=tuple(f"encoder.layers.encoder_layer_{i}" for i in (1, 3, 5)),
        layer_types=frozenset({"attention", "layernorm"}),
    )

    def forward_features(self, x: Tensor) -> Tensor:
        patches = self.conv_proj(x)  # [N, D, g, g]
        n, d, g, _ = patches.shape
        tokens = self.encoder(patches.flatten(2).transpose(1, 2))  # [N, g*g, D], final LayerNorm applied
        return tokens.transpose(1, 2).reshape(n, d, g, g)
