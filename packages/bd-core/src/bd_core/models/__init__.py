"""Model registry, `create_model` and `anatomy`."""

from bd_core.models.anatomy import Anatomy, activation_points, anatomy
from bd_core.models.contract import BdModel, ModelFacts
from bd_core.models.registry import MODELS, canonical_model, create_model

__all__ = [
    "MODELS", "Anatomy", "BdModel", "ModelFacts", "activation_points", "anatomy", "canonical_model", "create_model",
]
