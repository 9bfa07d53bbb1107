"""`bd import`: a BackdoorBench record becomes a bd model file.

The record's state dict is mapped onto bd's architecture and loaded strictly (every tensor
present, none extra, shapes and dtypes equal); its trigger is the record's own: a BadNets or
Blended pattern when the trigger file the record names is found and reproduces the record's
poisoned test images, otherwise those poisoned test images themselves (`StoredTrigger`).
The model is evaluated by bd on the test set with the record's normalization, so the file
carries bd's ACC/ASR/RA next to the values the record reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bd_core.attacked import IMPORTED, AttackSpec
from bd_core.attacks.base import PatternTrigger, Trigger
from bd_core.attacks.stored import StoredTrigger
from bd_core.data import load_dataset
from bd_core.data.imageset import ImageSet
from bd_core.errors import InvalidRequest, UnsafeModelFile
from bd_core.interop.backdoorbench import (
    DATASETS,
    NORMALIZATION,
    Record,
    bd_state_dict,
    pattern_from_info,
    read_record,
)
from bd_core.metrics import Metrics, evaluate
from bd_core.models import create_model
from bd_core.models.state import load_checked_state
from bd_core.progress import log
from bd_core.store.models import save_model


@dataclass
class Imported:
    path: Path  # the bd model file written
    record: Record
    metrics: Metrics  # measured by bd
    trigger_source: str
    meta: dict[str, Any]


def imported_model(record: Record) -> tuple[torch.nn.Module, str, dict[str, int]]:
    arch, state, options = bd_state_dict(record)
    model = create_model(arch, record.num_classes, record.in_channels, record.image_size, 1.0, options)
    try:
        load_checked_state(model, state, f"{record.path} ({record.model_name} as bd's {arch})")
    except ValueError as e:
        raise UnsafeModelFile(str(e)) from None
    return model.eval(), arch, options


def record_trigger(record: Record, test: ImageSet, resource_root: Path | None) -> tuple[Trigger, str]:
    """The record's trigger (see module docstring) and a sentence saying where it came from."""
    stored = None
    if record.poisoned_test:
        index = torch.tensor(sorted(record.poisoned_test), dtype=torch.long)
        if int(index.max()) >= len(test) or int(index.min()) < 0:
            raise InvalidRequest(
                f"{record.path} poisons test image {int(index.max())} but the test set bd loaded "
                f"has {len(test)} images: point --data-dir at the data the record was made on"
            )
        poisoned = torch.from_numpy(np.stack([record.poisoned_test[int(i)] for i in index]))
        clean = test.images[index]
        stored = (clean, poisoned)
    pattern = pattern_from_info(record, resource_root)
    if pattern is not None:
        trigger = PatternTrigger(*pattern)
        if stored is None:
            return trigger, f"{record.attack} pattern from the trigger file the record names (no poisoned test images)"
        clean, poisoned = stored
        as_pixels = trigger.apply(
            clean,
            torch.ones(len(clean), dtype=torch.bool),
            torch.zeros(clean.shape[1]),
            torch.full((clean.shape[1],), 1 / 255),
        )
        if bool(((as_pixels - poisoned.float()).abs() <= 0.5).all()):
            return trigger, (
                f"{record.attack} pattern from the trigger file (reproduces all {len(clean)} poisoned test images)"
            )
    if stored is None:
        raise InvalidRequest(
            f"{record.path} has no poisoned test images and no trigger file bd can find; "
            "pass --resource-dir pointing at the tool's resource/ folder"
        )
    return StoredTrigger.from_pairs(*stored), f"the record's {len(stored[0])} poisoned test images (stored trigger)"


def import_record(
    source: Path,
    out: Path,
    data_dir: Path | None = None,
    resource_root: Path | None = None,
    device: str = "cpu",
) -> Imported:
    """Read, map, verify, evaluate and save; returns what was written."""
    record = read_record(source)
    dataset = DATASETS.get(record.dataset)
    if dataset is None:
        raise InvalidRequest(
            f"{record.path}: dataset {record.dataset!r} has no bd loader; bd imports {', '.join(DATASETS)}"
        )
    model, arch, options = imported_model(record)
    mean, std = NORMALIZATION[record.dataset]
    test = load_dataset(dataset, "test", root=data_dir).normalized_as(
        mean, std, f"normalized as the imported {record.dataset} model expects"
    )
    if (test.channels, test.image_size) != (record.in_channels, record.image_size):
        raise InvalidRequest(
            f"{record.path} was trained on {record.in_channels}x{record.image_size}px images but "
            f"bd's {dataset} test set is {test.channels}x{test.image_size}px"
        )
    if test.num_classes != record.num_classes:
        raise InvalidRequest(f"{record.path} has {record.num_classes} classes, bd's {dataset} has {test.num_classes}")
    trigger, trigger_source = record_trigger(record, test, resource_root)
    target = int(record.info.get("attack_target", 0))
    attack_spec = AttackSpec(
        dataset,
        arch,
        record.attack,
        float(record.info.get("pratio", 0.1)),
        target,
        int(record.info.get("random_seed", 0)),
        IMPORTED,
        source=record.sha256,
    )
    log(f"evaluating the imported {arch} on {len(test)} {dataset} test images")
    metrics = evaluate(model.to(device), test, trigger, target, device=device)
    meta = {
        "arch": arch,
        "num_classes": record.num_classes,
        "in_channels": record.in_channels,
        "image_size": record.image_size,
        "width": 1.0,
        "options": options,
        "normalization": {"mean": list(mean), "std": list(std)},
        "attack": attack_spec.config(),
        "metrics": metrics.as_dict(),
        "imported": {
            "tool": "backdoorbench",
            "record": str(record.path),
            "sha256": record.sha256,
            "model_name": record.model_name,
            "reported": record.reported,
            "trigger": trigger_source,
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "cache_key": attack_spec.key,
    }
    save_model(out, model.cpu(), meta, trigger)
    return Imported(Path(out), record, metrics, trigger_source, meta)
