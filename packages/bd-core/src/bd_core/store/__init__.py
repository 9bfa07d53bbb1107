"""Results database and attacked-model cache (safetensors only)."""

from bd_core.safefile import check_safetensors, load_tensors, save_tensors
from bd_core.store.models import AttackedModel, ModelCache, config_key, load_model, save_model
from bd_core.store.results import ResultStore, StoreError

__all__ = [
    "AttackedModel",
    "ModelCache",
    "ResultStore",
    "StoreError",
    "check_safetensors",
    "config_key",
    "load_model",
    "load_tensors",
    "save_model",
    "save_tensors",
]
