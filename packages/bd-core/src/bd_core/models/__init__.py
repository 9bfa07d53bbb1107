"""Model registry, `create_model` and `anatomy`."""

from bd_core.models.anatomy import Anatomy, activation_points, anatomy
from bd_core.models.contract import BdModel, ModelFacts, as_feature_map
from bd_core.models.registry import MODELS, TRAINING_CHANGES, canonical_model, create_model, training_changes

__all__ = [
    "MODELS",
    "TRAINING_CHANGES",
    "Anatomy",
    "BdModel",
    "ModelFacts",
    "activation_points",
    "anatomy",
    "as_feature_map",
    "canonical_model",
    "create_model",
    "training_changes",
]
