"""EfficientNet-B3 and MobileNetV3-Large from torchvision's definitions (as BackdoorBench
uses them), with the stem conv rebuilt for 1- or 3-channel input and a width multiplier.
Their global pooling makes them work from 28 px inputs upward."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models import mobilenetv3 as tv_mobilenet

from bd_core.models.contract import BdModel, ModelFacts


def _replace_stem(features: nn.Sequential, in_channels: int) -> None:
    stem: nn.Conv2d = features[0][0]
    if in_channels != stem.in_channels:
        features[0][0] = nn.Conv2d(
            in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=stem.bias is not None
        )


class _TorchvisionClassifier(BdModel):
    """features -> global average pool -> classifier, as torchvision builds these networks."""

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


class EfficientNetB3(_TorchvisionClassifier):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        setting, last_channel = tv_efficientnet._efficientnet_conf(
            "efficientnet_b3", width_mult=1.2 * width, depth_mult=1.4
        )
        net = tv_efficientnet.EfficientNet(setting, dropout=0.3, num_classes=num_classes, last_channel=last_channel)
        _replace_stem(net.features, in_channels)
        self.features, self.avgpool, self.classifier = net.features, net.avgpool, net.classifier

    facts = ModelFacts(
        pool="avgpool",
        classifier="classifier",
        last_conv="features.8.0",
        polarizer_before="features.8.0",
        stages=("features.4", "features.6", "features.8"),
    )


class MobileNetV3Large(_TorchvisionClassifier):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        setting, last_channel = tv_mobilenet._mobilenet_v3_conf("mobilenet_v3_large", width_mult=width)
        net = tv_mobilenet.MobileNetV3(setting, max(8, round(last_channel * width)), num_classes=num_classes)
        _replace_stem(net.features, in_channels)
        self.features, self.avgpool, self.classifier = net.features, net.avgpool, net.classifier

    facts = ModelFacts(
        pool="avgpool",
        classifier="classifier",
        last_conv="features.16.0",
        polarizer_before="features.16.0",
        stages=("features.6", "features.12", "features.16"),
    )
