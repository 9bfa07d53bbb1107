"""Writers of small BackdoorBench records (the layout `attack/*.py` of BackdoorBench and of the
survey's fork leave in record/<name>/), for `bd import` tests."""

from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def backdoorbench_preact_state(model: torch.nn.Module) -> OrderedDict:
    """bd's PreActResNet18 state dict under BackdoorBench's names (projection shortcut in a Sequential)."""
    return OrderedDict((k.replace(".shortcut.", ".shortcut.0."), v.clone()) for k, v in model.state_dict().items())


def badnets_pattern(size: int = 32) -> np.ndarray:
    """BackdoorBench's resource/badnet/trigger_image.png: black, with a 3x3 white patch bottom right."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[-3:, -3:] = 255
    return image


def poison_badnets(images_hwc: np.ndarray) -> np.ndarray:
    out = images_hwc.copy()
    out[:, -3:, -3:] = 255
    return out


def reference_logits(model: torch.nn.Module, images_hwc: np.ndarray) -> torch.Tensor:
    """What BackdoorBench's test transform (ToTensor, Normalize) feeds the model."""
    x = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()((x - mean) / std)


def write_record(
    root: Path,
    name: str,
    model: torch.nn.Module,
    test_hwc: np.ndarray,
    test_labels: list[int],
    *,
    target: int = 0,
    on_disk: bool = True,
    with_resource: bool = True,
    extra: dict | None = None,
) -> Path:
    """A BadNets record of `model` on the given test images: attack_result.pt, info.pickle,
    final_result.csv (the metrics BackdoorBench's own evaluation gives) and, on disk, the
    poisoned test images as bd_test_dataset/<label>/<index>.png."""
    folder = root / "record" / name
    folder.mkdir(parents=True)
    victims = [i for i, y in enumerate(test_labels) if y != target]
    poisoned = poison_badnets(test_hwc[victims])
    data_dict = {}
    for row, index in enumerate(victims):
        label = test_labels[index]
        if on_disk:
            path = folder / "bd_test_dataset" / str(label) / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(poisoned[row]).save(path)
            data_dict[np.int64(index)] = {
                "path": f"../record/{name}/bd_test_dataset/{label}/{index}.png",
                "other_info": [target, label],
            }
        else:
            data_dict[np.int64(index)] = (Image.fromarray(poisoned[row]), target, label)
    bd_test = {
        "bd_data_container": {
            "save_folder_path": f"../record/{name}/bd_test_dataset" if on_disk else None,
            "data_dict": data_dict,
            "save_file_format": ".png",
        },
        "getitem_all": True,
        "getitem_all_switch": False,
        "original_index_array": np.array(victims, dtype=np.int64),
        "poison_indicator": np.isin(np.arange(len(test_labels)), victims).astype(np.float64),
        "save_folder_path": None,
    }
    torch.save(
        {
            "model_name": "preactresnet18",
            "num_classes": 10,
            "model": backdoorbench_preact_state(model),
            "data_path": "../data/cifar10",
            "img_size": [32, 32, 3],
            "clean_data": "cifar10",
            "bd_train": None,
            "bd_test": bd_test,
            **(extra or {}),
        },
        folder / "attack_result.pt",
    )
    torch.save(
        {
            "attack": "badnet",
            "pratio": 0.1,
            "attack_target": target,
            "random_seed": 0,
            "patch_mask_path": "../resource/badnet/trigger_image.png",
            "img_size": [32, 32, 3],
            "terminal_info": ["attack/badnet.py", "--epochs", "1"],
        },
        folder / "info.pickle",
    )
    if with_resource:
        resource = root / "resource" / "badnet" / "trigger_image.png"
        resource.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(badnets_pattern()).save(resource)
    clean_pred = reference_logits(model, test_hwc).argmax(1)
    bd_pred = reference_logits(model, poisoned).argmax(1)
    truth = torch.tensor(test_labels)
    with open(folder / "final_result.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "test_acc", "test_asr", "test_ra"])
        writer.writerow(
            [
                0,
                float((clean_pred == truth).float().mean()),
                float((bd_pred == target).float().mean()),
                float((bd_pred == truth[victims]).float().mean()),
            ]
        )
    return folder


class RunsCode:
    """An object whose unpickling would call `touch` on a sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.sentinel}",))
