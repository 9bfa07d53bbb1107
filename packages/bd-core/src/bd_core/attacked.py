"""Attacked models: train once, cache by the hash of the full configuration, reuse.

`AttackSpec` names everything that determines an attacked model. `obtain_attacked_model`
returns the cached one when it exists (and says so), otherwise trains it with the
shared trainer, measures its clean/backdoor metrics, and caches model + trigger.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bd_core.attacks import ATTACKS, canonical_attack, create_attack
from bd_core.attacks.base import Attack, TrainingPlan, Trigger, check_ratio
from bd_core.data import Augment, ImageSet, canonical_dataset, load_dataset
from bd_core.data.batches import clean_batches
from bd_core.data.mitigation import stratified_index
from bd_core.devices import device_label
from bd_core.errors import InvalidRequest
from bd_core.metrics import evaluate
from bd_core.models import canonical_model, create_model, training_changes
from bd_core.paths import cache_root
from bd_core.progress import log
from bd_core.safefile import load_tensors, save_tensors
from bd_core.store.models import AttackedModel, ModelCache, config_key
from bd_core.train import Recipe, fit, preset

MODEL_FORMAT = 1
IMPORTED = "imported"  # the preset name of models made by another tool


@dataclass(frozen=True)
class AttackSpec:
    dataset: str
    arch: str
    attack: str
    poison_ratio: float = 0.1
    target: int = 0
    seed: int = 0
    preset: str = "quick"
    attack_settings: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # sha256 of the file an imported model came from (`bd import`); None for models bd trains
    source: str | None = None
    # content fingerprint of the data (DataBundle.fingerprint): two folders holding different images
    # under one dataset name never share a model or a result; "" until bound with `for_data`
    data: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", canonical_dataset(self.dataset))
        object.__setattr__(self, "arch", canonical_model(self.arch))
        object.__setattr__(self, "attack", canonical_attack(self.attack))
        check_ratio(self.poison_ratio)
        if self.imported:
            if self.preset != IMPORTED:
                raise InvalidRequest(f"an imported model's preset is {IMPORTED!r}, got {self.preset!r}")
        else:
            preset(self.preset)

    def for_data(self, bundle: DataBundle) -> AttackSpec:
        """This spec bound to the data it runs on (the fingerprint enters every key)."""
        fingerprint = bundle.fingerprint
        if self.data and self.data != fingerprint:
            raise InvalidRequest(
                f"the {self.dataset} data changed since this experiment was defined "
                f"(fingerprint {self.data} -> {fingerprint}); define it again on the data at hand"
            )
        return self if self.data == fingerprint else dataclasses.replace(self, data=fingerprint)

    @property
    def imported(self) -> bool:
        """Trained by another tool and brought in with `bd import` (bd cannot retrain it)."""
        return self.source is not None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AttackSpec:
        """The spec whose `config()` this is (as stored in a model file's metadata)."""
        try:
            return cls(
                config["dataset"],
                config["arch"],
                config["attack"],
                float(config["poison_ratio"]),
                int(config["target"]),
                int(config["seed"]),
                str(config["preset"]),
                dict(config.get("attack_settings") or {}),
                config.get("source"),
                str(config.get("data", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"attack description is incomplete or malformed ({type(e).__name__}: {e})") from None

    def build_attack(self) -> Attack:
        return create_attack(self.attack, self.attack_settings, self.preset)

    @property
    def recipe(self) -> Recipe:
        """The preset's recipe, with the architecture's changes (the ViT trains with AdamW) and the
        attack's own for the preset (e.g. WaNet trains longer under quick)."""
        return attack_recipe(self.attack, self.preset, self.arch)

    def config(self) -> dict[str, Any]:
        """Everything that determines the trained model (the cache key hashes this)."""
        data = {"data": self.data} if self.data else {}
        if self.imported:  # the model is the file: its hash stands for how it was made
            return {
                "format": MODEL_FORMAT,
                "dataset": self.dataset,
                "arch": self.arch,
                "attack": self.attack,
                "poison_ratio": self.poison_ratio,
                "target": self.target,
                "seed": self.seed,
                "preset": self.preset,
                "source": self.source,
                **data,
            }
        return {
            **data,
            "format": MODEL_FORMAT,
            "dataset": self.dataset,
            "arch": self.arch,
            "attack": self.attack,
            "attack_settings": self.build_attack().settings(),
            "poison_ratio": self.poison_ratio,
            "target": self.target,
            "seed": self.seed,
            "preset": self.preset,
            "recipe": self.recipe.config(),
        }

    @functools.cached_property
    def key(self) -> str:  # kept: a grid asks it of every unit
        return config_key(self.config())


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of a model's parameter and buffer names, shapes, dtypes and values: which
    trained instance a result was computed on. One configuration can be trained twice with
    different outcomes (a change of the training loop's arithmetic keeps the cache key), and
    results stored under one key must not be compared across instances unseen."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(values.view(torch.uint8).numpy() if values.numel() else b"")
    return digest.hexdigest()[:16]


def weak_attack_threshold() -> float:
    """Below this ASR an attacked model is flagged: its backdoor did not take, so defending it
    measures little. $BD_WEAK_ASR overrides the default 0.5."""
    try:
        value = float(os.environ.get("BD_WEAK_ASR", "0.5"))
    except ValueError:
        raise InvalidRequest(f"BD_WEAK_ASR must be a number in [0, 1], got {os.environ['BD_WEAK_ASR']!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"BD_WEAK_ASR must be in [0, 1], got {value}")
    return value


def weak_attack_warning(asr: float, what: str = "the attacked model") -> str | None:
    """A sentence for results whose attacked model has too low an ASR, else None."""
    threshold = weak_attack_threshold()
    if asr >= threshold:
        return None
    return (
        f"{what} has ASR {asr:.1%}, below {threshold:.0%} (BD_WEAK_ASR): the backdoor did not take, so a "
        "defense result on it says little; train longer or poison more"
    )


def attack_recipe(attack: str, preset_name: str, arch: str | None = None) -> Recipe:
    changes = ATTACKS[canonical_attack(attack)].preset_recipes.get(preset_name, {})
    for_arch = training_changes(arch, preset_name) if arch else {}
    return dataclasses.replace(preset(preset_name), **{**for_arch, **changes})  # the attack's own last


@dataclass
class DataBundle:
    train: ImageSet  # the full training split (mitigation sets are drawn from it)
    test: ImageSet

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of both splits (see ImageSet.digest)."""
        return hashlib.sha256(f"{self.train.digest()}:{self.test.digest()}".encode()).hexdigest()[:16]

    def for_model(self, meta: dict[str, Any]) -> DataBundle:
        """The data as the model expects it: a model imported from another tool carries that
        tool's normalization constants, which replace the dataset's."""
        norm = meta.get("normalization")
        if not norm:
            return self
        why = f"normalized as the imported model expects (mean {tuple(norm['mean'])}, std {tuple(norm['std'])})"
        return DataBundle(
            self.train.normalized_as(tuple(norm["mean"]), tuple(norm["std"]), why),
            self.test.normalized_as(tuple(norm["mean"]), tuple(norm["std"]), why),
        )


def load_data(dataset: str, root: Path | None = None, download: bool = False) -> DataBundle:
    return DataBundle(
        load_dataset(dataset, "train", root=root, download=download),
        load_dataset(dataset, "test", root=root, download=download),
    )


def training_subset(train: ImageSet, recipe: Recipe, seed: int) -> ImageSet:
    if recipe.train_limit is None or recipe.train_limit >= len(train):
        return train
    g = torch.Generator().manual_seed(seed)
    return train.subset(stratified_index(train.labels, train.num_classes, recipe.train_limit // train.num_classes, g))


def train_attacked_model(
    spec: AttackSpec, data: DataBundle, device: str = "cpu"
) -> tuple[torch.nn.Module, Trigger, dict]:
    recipe, attack = spec.recipe, spec.build_attack()
    if not 0 <= spec.target < data.train.num_classes:
        raise InvalidRequest(f"target class {spec.target} outside 0..{data.train.num_classes - 1}")
    train = training_subset(data.train, recipe, spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    trigger = fitted_trigger(attack, train, spec)
    poisoned = attack.poison_index(train, spec.poison_ratio, spec.target, g)
    augment = Augment.for_dataset(train.info)
    plan = attack.training_plan(train, trigger, poisoned, spec.poison_ratio, spec.target, augment, device, spec.seed)
    model, report = _train(
        spec.arch, train, plan, recipe, spec.seed, device, f"training {spec.attack} {spec.arch} on {spec.dataset}"
    )
    report["poisoned_images"] = (
        f"{spec.poison_ratio:.0%} of every batch" if attack.training_controlled else int(poisoned.sum())
    )
    return model, trigger, report


def fitted_trigger(attack: Attack, train: ImageSet, spec: AttackSpec) -> Trigger:
    """attack.fit, cached on disk for attacks whose fitting is expensive (LF's optimization, ...),
    so that every poison ratio of the same attack reuses one trigger."""
    if not attack.cache_trigger:
        return attack.fit(train, spec.seed, spec.target)
    key = config_key(
        {
            "trigger": attack.settings(),
            "attack": spec.attack,
            "dataset": spec.dataset,
            "train_images": len(train),
            "data": train.digest(),
            "seed": spec.seed,
            "target": spec.target,
            "format": MODEL_FORMAT,
        }
    )
    path = cache_root() / "triggers" / f"{spec.attack}-{key}.safetensors"
    if path.exists():
        tensors, metadata = load_tensors(path)
        log(f"using cached {spec.attack} trigger {path}")
        return Trigger.restore(tensors, json.loads(metadata["bd_trigger"]))
    log(f"fitting the {spec.attack} trigger (cached afterwards at {path})")
    trigger = attack.fit(train, spec.seed, spec.target)
    save_tensors(path, trigger.artifacts(), {"bd_trigger": json.dumps(trigger.settings())})
    return trigger


def train_clean_model(
    dataset: str,
    arch: str,
    data: DataBundle,
    preset_name: str = "quick",
    seed: int = 0,
    device: str = "cpu",
    recipe: Recipe | None = None,
) -> tuple[torch.nn.Module, dict]:
    """The same recipe without any poisoning: the reference for an attack's clean-accuracy cost
    (`recipe` overrides the preset's, e.g. `AttackSpec.recipe` of an attack that trains longer)."""
    recipe = recipe or dataclasses.replace(preset(preset_name), **training_changes(arch, preset_name))
    train = training_subset(data.train, recipe, seed)
    make_batch = clean_batches(train, Augment.for_dataset(train.info), device)
    return _train(
        canonical_model(arch),
        train,
        TrainingPlan(make_batch),
        recipe,
        seed,
        device,
        f"training clean {arch} on {canonical_dataset(dataset)}",
    )


def _train(arch: str, train: ImageSet, plan: TrainingPlan, recipe: Recipe, seed: int, device: str, description: str):
    torch.manual_seed(seed)
    model = create_model(arch, train.num_classes, train.channels, train.image_size, recipe.width)
    started = time.perf_counter()
    losses = fit(
        model,
        plan.make_batch,
        len(train),
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        seed=seed,
        device=device,
        description=description,
        step=plan.step,
        after_step=plan.after_step,
        optimizer=recipe.optimizer,
    )
    report = {
        "train_seconds": round(time.perf_counter() - started, 2),
        "device": device_label(device),
        "train_images": len(train),
        "epoch_losses": [round(v, 4) for v in losses],
    }
    return model, report


def obtain_attacked_model(
    spec: AttackSpec, data: DataBundle, cache: ModelCache, device: str = "cpu"
) -> tuple[AttackedModel, bool]:
    """The attacked model for `spec` from the cache, or trained and cached; bool: cache hit."""
    spec = spec.for_data(data)
    if not 0 <= spec.target < data.train.num_classes:
        raise InvalidRequest(
            f"target class {spec.target} is not a class of {spec.dataset} (0..{data.train.num_classes - 1})"
        )
    key = spec.key
    hit = cache.get(key)
    if hit is not None:
        log(f"using cached attacked model {key} ({cache.path(key)})")
        hit.model.to(device)
        return hit, True
    log(f"training attacked model {key}: {spec.attack} on {spec.dataset}/{spec.arch}, preset {spec.preset}")
    model, trigger, report = train_attacked_model(spec, data, device)
    pre = evaluate(model, data.test, trigger, spec.target, device=device)
    meta = {
        "arch": spec.arch,
        "num_classes": data.train.num_classes,
        "in_channels": data.train.channels,
        "image_size": data.train.image_size,
        "width": spec.recipe.width,
        "attack": spec.config(),
        "training": report,
        "metrics": pre.as_dict(),
    }
    path = cache.put(key, model, meta, trigger)
    log(f"cached attacked model at {path}")
    return AttackedModel(model, trigger, {**meta, "cache_key": key}), False
