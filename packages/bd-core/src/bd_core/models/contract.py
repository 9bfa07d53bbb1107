"""The contract every bd model keeps, as timm's models do: the forward pass split at the
penultimate feature map, and the facts about the network that defenses need.

Every architecture in bd computes ``forward_head(forward_features(x))``: the convolutional
trunk up to the map global pooling receives, then pooling and the classifier. Defenses that
act on features (FP's last-layer pruning, BTI-DBF's feature mask, FST's head) use the two
halves; defenses that need a named layer read `facts`, through `bd_core.models.anatomy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn
from torch import Tensor


@dataclass(frozen=True)
class ModelFacts:
    """Module names, as `named_modules()` spells them."""

    pool: str  # global pooling: its input is the feature map, its output the feature vector
    classifier: str  # maps the pooled feature vector to logits
    last_conv: str  # the conv whose channels feed global pooling (FP prunes here)
    polarizer_before: str  # NPD inserts its polarizer before this conv (the survey fork's choice)
    stages: tuple[str, ...]  # stage outputs, shallow to deep (NAD distils the deepest three)
    # True where ReLUs are applied functionally, each right after a BatchNorm2d (PreAct-ResNet):
    # then the BN is where an activation bound goes (MM-BD, UNIT). Otherwise activations are modules.
    relu_after_bn: bool = False


class BdModel(nn.Module):
    """Base of bd's architectures: subclasses define `facts`, `forward_features` and `forward_head`."""

    facts: ClassVar[ModelFacts]

    def forward_features(self, x: Tensor) -> Tensor:
        """The map global pooling receives, [N, C, H, W]."""
        raise NotImplementedError

    def forward_head(self, feature_map: Tensor) -> Tensor:
        """Logits from the feature map: global pooling, flatten, classifier."""
        pool, classifier = self.get_submodule(self.facts.pool), self.get_submodule(self.facts.classifier)
        return classifier(pool(feature_map).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_layers(self) -> list[str]:
        """The stage modules whose outputs are the model's intermediate features, shallow to deep."""
        return list(self.facts.stages)
