"""Attacked-model files and their cache.

A model file is safetensors: the state dict plus metadata `bd_model` (architecture,
classes, channels, size, width) and, for attacked models, `bd_trigger` (how to
rebuild the trigger, whose tensors are stored under `trigger.*`). The cache keys
entries by a hash of the full attack configuration.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from bd_core.attacks.base import Trigger
from bd_core.errors import BdError, UnsafeModelFile
from bd_core.models import create_model
from bd_core.models.state import load_checked_state
from bd_core.safefile import load_tensors, metadata_json, save_tensors, write_atomically

MODEL_FILE = "model.safetensors"
REQUIRED = {"arch": str, "num_classes": int, "in_channels": int, "image_size": int, "width": float}


def config_key(config: dict[str, Any]) -> str:
    """Stable content hash of a JSON-able configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


@dataclass
class AttackedModel:
    model: nn.Module
    trigger: Trigger
    meta: dict[str, Any]  # model description + attack config + training report


def save_model(path: Path, model: nn.Module, meta: dict[str, Any], trigger: Trigger | None = None) -> None:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    metadata = {"bd_model": json.dumps(meta, default=str)}
    if trigger is not None:
        tensors.update({f"trigger.{k}": v.detach().cpu() for k, v in trigger.artifacts().items()})
        metadata["bd_trigger"] = json.dumps(trigger.settings())
    save_tensors(path, tensors, metadata)


def load_model(path: Path, need_trigger: bool = True) -> AttackedModel:
    """Rebuild a model (and its trigger) from a bd safetensors file, validating shapes and metadata."""
    path = Path(path)
    tensors, metadata = load_tensors(path)
    meta = metadata_json(metadata, "bd_model", path)
    for key, kind in REQUIRED.items():
        if not isinstance(meta.get(key), (kind, int) if kind is float else kind):
            raise UnsafeModelFile(f"{path}: metadata field {key!r} missing or not {kind.__name__}")
    options = meta.get("options") or {}
    if not isinstance(options, dict):
        raise UnsafeModelFile(f"{path}: metadata field 'options' is not a mapping")
    try:
        model = create_model(
            meta["arch"], meta["num_classes"], meta["in_channels"], meta["image_size"], meta["width"], options
        )
    except BdError as e:
        raise UnsafeModelFile(f"{path}: {e}") from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        load_checked_state(model, state, f"{path} ({meta['arch']})")
    except ValueError as e:
        raise UnsafeModelFile(str(e)) from None
    model.eval()
    trigger = None
    if need_trigger or "bd_trigger" in metadata:
        settings = metadata_json(metadata, "bd_trigger", path)
        artifacts = {k[len("trigger.") :]: v for k, v in tensors.items() if k.startswith("trigger.")}
        trigger = Trigger.restore(artifacts, settings)
        try:
            trigger.check_fits(meta["in_channels"], meta["image_size"])
        except ValueError as e:
            shape = f"{meta['in_channels']}x{meta['image_size']}x{meta['image_size']}"
            raise UnsafeModelFile(
                f"{path}: its {trigger.kind} trigger does not fit the model's {shape} images ({e})"
            ) from None
    return AttackedModel(model, trigger, meta)


class ModelCache:
    """Directory of attacked models: <root>/<key>/model.safetensors, keyed by `config_key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key / MODEL_FILE

    def get_path(self, key: str) -> Path | None:
        """Where the model for `key` is, if it has been trained."""
        path = self.path(key)
        return path if path.exists() else None

    def get(self, key: str) -> AttackedModel | None:
        path = self.path(key)
        return load_model(path) if path.exists() else None

    def put_bytes(self, key: str, blob: bytes) -> Path:
        """Keep a model file made elsewhere (another node of a grid), written whole or not at all;
        it is validated like any model file when loaded."""
        path = self.path(key)
        write_atomically(path, blob)
        return path

    def put(self, key: str, model: nn.Module, meta: dict[str, Any], trigger: Trigger) -> Path:
        path = self.path(key)
        save_model(path, model, {**meta, "cache_key": key, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, trigger)
        return path
