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
    # the conv whose channels feed global pooling (FP names it); None where no conv does (ViT)
    last_conv: str | None
    polarizer_before: str | None  # NPD inserts its polarizer before this conv (the survey fork's choice)
    # stage outputs, shallow to deep (NAD distils the deepest three): [N, C, H, W] maps, or for a
    # transformer [N, L, D] tokens (`as_feature_map` lays those out as maps)
    stages: tuple[str, ...]
    # True where ReLUs are applied functionally, each right after a BatchNorm2d (PreAct-ResNet):
    # then the BN is where an activation bound goes (MM-BD, UNIT). Otherwise activations are modules.
    relu_after_bn: bool = False
    # the kinds of layer the network is built from, which defenses check before they start:
    # "conv" and "batchnorm" for bd's CNNs, "attention" and "layernorm" for the ViT
    layer_types: frozenset[str] = frozenset({"conv", "batchnorm"})


class BdModel(nn.Module):
    """Base of bd's architectures: subclasses define `facts`, `forward_features` and `forward_head`."""

    facts: ClassVar[ModelFacts]
    # the one input size the network is built for (a transformer's position embeddings fix its
    # token count); None where global pooling takes any size
    input_size: int | None = None

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


def as_feature_map(activation: Tensor) -> Tensor:
    """A layer's output with channels on dim 1: [N, C, H, W] maps and [N, C] vectors as they are,
    a transformer's [N, L, D] tokens as [N, D, L, 1] (the tokens are the spatial positions)."""
    return activation.transpose(1, 2).unsqueeze(-1) if activation.dim() == 3 else activation
