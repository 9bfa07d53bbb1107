"""Model registry, `create_model` and `anatomy`."""

from bd_core.models.anatomy import Anatomy, anatomy
from bd_core.models.registry import MODELS, canonical_model, create_model

__all__ = ["MODELS", "Anatomy", "anatomy", "canonical_model", "create_model"]
