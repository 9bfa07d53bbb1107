"""VGG-19 with batch normalization (Simonyan & Zisserman, 2015), configuration E.

Small-image adaptation (as in CIFAR VGGs): pools use ceil_mode so that 28 px
inputs survive the five halvings, features are globally averaged to 512 values,
and the classifier is 512-512-classes instead of ImageNet's 25088-4096-4096.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from bd_core.models.contract import BdModel, ModelFacts

CONFIG_E = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG19BN(BdModel):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, hidden: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in CONFIG_E:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                c_out = max(4, round(int(v) * width))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = hidden or max(4, round(512 * width))  # 4096 for torchvision's head (bd import)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    facts = ModelFacts(
        pool="avgpool",
        classifier="classifier",
        last_conv="features.49",
        polarizer_before="features.49",
        stages=("features.26", "features.39", "features.52"),  # outputs of the last three pooling blocks
    )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)
