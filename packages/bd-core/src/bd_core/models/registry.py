"""Model registry and the one entry point `create_model` (timm style)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from bd_core.errors import BdError
from bd_core.models.preact_resnet import PreActResNet18
from bd_core.models.torchvision_nets import EfficientNetB3, MobileNetV3Large
from bd_core.models.vgg import VGG19BN
from bd_core.models.vit import ViT
from bd_core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "architecture", hint=" (aliases: vgg19, resnet18, mobilenet, vit-tiny)"
)
MODELS.add("preact-resnet18", PreActResNet18, ("resnet", "resnet18"))
MODELS.add("vgg19-bn", VGG19BN, ("vgg19", "vgg"))
MODELS.add("efficientnet-b3", EfficientNetB3, ("efficientnet",))
MODELS.add("mobilenetv3-large", MobileNetV3Large, ("mobilenetv3", "mobilenet"))
MODELS.add("vit", ViT, ("vit-tiny",))
# position embeddings fix a transformer's token count, so it is built for one input size; the
# CNNs' global pooling takes any size
BUILT_FOR_SIZE = {"vit"}
# how an architecture departs from the preset's training recipe, for every preset ("*") and per
# preset. SGD at the CNNs' learning rate barely trains a ViT in a few epochs (quick preset: ACC
# 69 %, BadNets ASR 12 %; AdamW at 1e-3 for 5 epochs: 73 % / 14 %); transformers train with AdamW
# and weight decay 0.05 (DeiT, Touvron et al., 2021). Under quick, lr 3e-3 for 10 epochs plants
# BadNets (ACC 79 %, ASR 99.8 %); the paper preset's 100 epochs keep the common 1e-3.
TRAINING_CHANGES: dict[str, dict[str, dict[str, object]]] = {
    "vit": {"*": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}, "quick": {"lr": 3e-3, "epochs": 10}},
}


def training_changes(arch: str, preset_name: str) -> dict[str, object]:
    """The recipe fields `arch` changes under `preset_name` (TRAINING_CHANGES)."""
    changes = TRAINING_CHANGES.get(canonical_model(arch), {})
    return {**changes.get("*", {}), **changes.get(preset_name, {})}


canonical_model = MODELS.canonical
MIN_SIZE, MAX_SIZE = 28, 64
MAX_CLASSES = 1000  # bounds what a model file can make bd allocate
# constructor options beyond the common ones, with their allowed ranges (e.g. an imported
# VGG19-BN keeps torchvision's 4096-wide head)
OPTIONS: dict[str, dict[str, tuple[int, int]]] = {"vgg19-bn": {"hidden": (4, 8192)}}


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    width: float = 1.0,
    options: dict[str, int] | None = None,
) -> nn.Module:
    """Build an untrained classifier for `in_channels` x `image_size`^2 inputs."""
    arch = canonical_model(name)
    allowed = OPTIONS.get(arch, {})
    for key, value in (options or {}).items():
        if key not in allowed:
            raise BdError(f"{arch} has no option {key!r}; valid: {', '.join(allowed) or '(none)'}")
        low, high = allowed[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BdError(f"{arch} option {key} must be an integer in {low}..{high}, got {value!r}")
    if in_channels not in (1, 3):
        raise BdError(f"in_channels must be 1 or 3, got {in_channels}")
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise BdError(f"image_size must be within {MIN_SIZE}..{MAX_SIZE} px, got {image_size}")
    if not 0 < width <= 4:
        raise BdError(f"width must be in (0, 4], got {width}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise BdError(f"num_classes must be within 2..{MAX_CLASSES}, got {num_classes}")
    if arch in BUILT_FOR_SIZE and image_size % 4:
        raise BdError(f"{arch} splits images into 4x4 patches: image_size must be a multiple of 4, got {image_size}")
    sized = {"image_size": image_size} if arch in BUILT_FOR_SIZE else {}
    return MODELS[arch](num_classes=num_classes, in_channels=in_channels, width=width, **sized, **(options or {}))
