"""Reading attacked models made by BackdoorBench (and the survey's fork of it) without running
any code from their files.

A BackdoorBench attack writes a record folder:

    record/<name>/attack_result.pt     torch.save of {model_name, num_classes, model (state dict),
                                       data_path, img_size, clean_data, bd_train, bd_test}
    record/<name>/info.pickle          torch.save of the attack's arguments (attack, pratio, target,
                                       trigger file paths, ...)
    record/<name>/final_result.csv     test_acc, test_asr, test_ra of the trained model
    record/<name>/bd_test_dataset/<label>/<index>.png   the poisoned test images (when saved to disk)

Both pickles are read by torch's weights-only unpickler with an allowlist of exactly what the
format needs: tensors, plain containers, numpy arrays and scalars, and PIL images, the last
rebuilt as inert `RecordedImage` values (mode, size, bytes), never as PIL objects. Any other
global (a function, a class with behaviour) makes the load fail before anything runs.
"""

from __future__ import annotations

import csv
import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bd_core.errors import UnsafeModelFile

RESULT_FILE = "attack_result.pt"
INFO_FILE = "info.pickle"
METRICS_FILE = "final_result.csv"
MAX_CLASSES = 1000
MAX_IMAGE_SIDE = 256

# BackdoorBench's names -> bd's
ARCHS = {
    "preactresnet18": "preact-resnet18",
    "vgg19_bn": "vgg19-bn",
    "efficientnet_b3": "efficientnet-b3",
    "mobilenet_v3_large": "mobilenetv3-large",
}
DATASETS = {"cifar10": "cifar10", "gtsrb": "gtsrb", "tiny": "tiny-imagenet"}
# utils/aggregate_block/dataset_and_transform_generate.py: get_dataset_normalization
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}


class RecordedImage:
    """Stands in for `PIL.Image.Image` while unpickling: keeps the pickled state as data.
    PIL pickles an image as NEWOBJ(Image) + BUILD([info, mode, size, palette, bytes])."""

    mode: str
    size: tuple[int, int]
    data: bytes

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, (list, tuple)) or len(state) < 4:
            raise pickle.UnpicklingError("malformed pickled image")
        self.mode, size, self.data = state[1], state[2], state[-1]
        if not (
            isinstance(self.mode, str)
            and isinstance(self.data, bytes)
            and len(size) == 2
            and all(isinstance(v, int) and 0 < v <= MAX_IMAGE_SIDE for v in size)
        ):
            raise pickle.UnpicklingError("malformed pickled image")
        self.size = (int(size[0]), int(size[1]))

    def to_array(self) -> np.ndarray:
        """uint8 [C,H,W] (RGB for colour modes)."""
        image = Image.frombytes(self.mode, self.size, self.data)
        return image_array(image)


def image_array(image: Image.Image) -> np.ndarray:
    image = image.convert("L") if image.mode in ("L", "1", "I", "I;16", "F") else image.convert("RGB")
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def _allowed_globals() -> list[Any]:
    """Everything a BackdoorBench record pickles besides tensors and plain containers."""
    names = []
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["_reconstruct"])
        except ImportError:
            continue
        names += [(module._reconstruct, f"{module_name}._reconstruct"), (module.scalar, f"{module_name}.scalar")]
    return (
        names
        + [np.ndarray, np.dtype, (RecordedImage, "PIL.Image.Image")]
        + [(getattr(np.dtypes, n), f"numpy.dtypes.{n}") for n in dir(np.dtypes) if n.endswith("DType")]
    )


def load_restricted(path: Path) -> Any:
    """torch.load with weights_only and the record allowlist; anything else is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeModelFile(f"{path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UnsafeModelFile(
            f"{path} is not a readable torch.save archive (expected the zip format torch.save writes)"
        )
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it pickles {found.group(1)}" if found else "it uses pickle operations beyond plain data"
        raise UnsafeModelFile(
            f"{path}: refused, {what}, which a BackdoorBench record does not need (bd loads "
            "only tensors, arrays, images and plain values; nothing was run)"
        ) from None
    except Exception as e:  # zip / storage errors: not a torch.save archive, or a damaged one
        raise UnsafeModelFile(f"{path} is not a readable torch.save archive: {str(e).splitlines()[0][:200]}") from None


@dataclass
class Record:
    """What bd takes from a BackdoorBench record."""

    path: Path  # the attack_result.pt file
    model_name: str
    num_classes: int
    image_size: int
    in_channels: int
    dataset: str  # BackdoorBench's name: cifar10, gtsrb, tiny
    state: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # the attack's arguments (info.pickle), if present
    reported: dict[str, float] = field(default_factory=dict)  # final_result.csv, in [0, 1]
    poisoned_test: dict[int, np.ndarray] = field(default_factory=dict)  # test index -> poisoned uint8 [C,H,W]
    sha256: str = ""

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def attack(self) -> str:
        return str(self.info.get("attack", "unknown"))


def read_record(path: Path) -> Record:
    """A record folder or its attack_result.pt, checked and decoded."""
    path = Path(path)
    result_path = path / RESULT_FILE if path.is_dir() else path
    if not result_path.is_file():
        raise UnsafeModelFile(f"{path}: no {RESULT_FILE} (give a BackdoorBench record folder or its {RESULT_FILE})")
    content = load_restricted(result_path)
    if not isinstance(content, dict):
        raise UnsafeModelFile(f"{result_path} holds a {type(content).__name__}, not a BackdoorBench attack result")
    missing = [
        k for k in ("model_name", "num_classes", "model", "img_size", "clean_data", "bd_test") if k not in content
    ]
    if missing:
        raise UnsafeModelFile(f"{result_path} is not a BackdoorBench attack result (missing {', '.join(missing)})")
    num_classes, img_size = content["num_classes"], content["img_size"]
    if not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
        raise UnsafeModelFile(f"{result_path}: num_classes {num_classes!r} is not an integer in 2..{MAX_CLASSES}")
    if (
        not isinstance(img_size, (list, tuple))
        or len(img_size) != 3
        or img_size[0] != img_size[1]
        or not all(isinstance(v, int) for v in img_size)
        or img_size[2] not in (1, 3)
        or not 8 <= img_size[0] <= MAX_IMAGE_SIDE
    ):
        raise UnsafeModelFile(f"{result_path}: img_size {img_size!r} is not [side, side, 1|3]")
    state = content["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UnsafeModelFile(f"{result_path}: 'model' is not a state dict of tensors")
    record = Record(
        path=result_path,
        model_name=str(content["model_name"]),
        num_classes=num_classes,
        image_size=int(img_size[0]),
        in_channels=int(img_size[2]),
        dataset=str(content["clean_data"]),
        state=dict(state),
        sha256=file_sha256(result_path),
    )
    info_path = result_path.parent / INFO_FILE
    if info_path.is_file():
        info = load_restricted(info_path)
        record.info = info if isinstance(info, dict) else {}
    record.reported = _read_metrics(result_path.parent / METRICS_FILE)
    record.poisoned_test = _poisoned_test_images(content["bd_test"], result_path.parent, record)
    return record


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for key, name in (("test_acc", "acc"), ("test_asr", "asr"), ("test_ra", "ra")):
        try:
            out[name] = float(rows[0][key])
        except (IndexError, KeyError, ValueError):
            pass
    return out


def _poisoned_test_images(bd_test: Any, folder: Path, record: Record) -> dict[int, np.ndarray]:
    """test index -> poisoned image, from bd_test's container: images held in the pickle (RAM mode)
    or PNG files under the record's bd_test_dataset/<label>/<index>.png (disk mode)."""
    try:
        data = bd_test["bd_data_container"]["data_dict"]
    except (TypeError, KeyError):
        raise UnsafeModelFile(f"{record.path}: bd_test has no bd_data_container.data_dict") from None
    if not isinstance(data, dict):
        raise UnsafeModelFile(f"{record.path}: bd_test's data_dict is not a dict")
    shape = (record.in_channels, record.image_size, record.image_size)
    images: dict[int, np.ndarray] = {}
    for key, value in data.items():
        index = int(key)
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], RecordedImage):
            arr = value[0].to_array()
        elif isinstance(value, dict) and isinstance(value.get("other_info"), (list, tuple)):
            label = int(value["other_info"][-1])  # [bd_label, original label]; files sit under the original label
            file = folder / "bd_test_dataset" / str(label) / f"{index}.png"
            if not file.is_file():
                raise UnsafeModelFile(f"{record.path}: poisoned test image {file} is missing")
            with Image.open(file) as im:
                arr = image_array(im)
        else:
            raise UnsafeModelFile(f"{record.path}: bd_test entry {index} is neither an image nor a file reference")
        if arr.shape != shape:
            if arr.shape[0] == 3 and shape[0] == 1:
                arr = arr[:1]
            else:
                raise UnsafeModelFile(f"{record.path}: poisoned test image {index} is {arr.shape}, expected {shape}")
        images[index] = arr
    return images


# ----------------------------------------------------------------- state dict -> bd's architectures


def preact_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """BackdoorBench's PreAct-ResNet18 state dict in bd's names: it wraps the projection shortcut
    in a Sequential (`shortcut.0.weight`), bd's is the conv itself (`shortcut.weight`)."""
    return {k.replace(".shortcut.0.", ".shortcut."): v for k, v in state.items()}


def bd_state_dict(record: Record) -> tuple[str, dict[str, Tensor], dict[str, int]]:
    """(bd architecture, state dict in bd's names, architecture options) for the record's model."""
    arch = ARCHS.get(record.model_name)
    if arch is None:
        raise UnsafeModelFile(
            f"{record.path}: model {record.model_name!r} has no bd counterpart; bd imports {', '.join(ARCHS)}"
        )
    state = {k.removeprefix("module."): v for k, v in record.state.items()}
    options: dict[str, int] = {}
    if arch == "preact-resnet18":
        state = preact_names(state)
    elif arch == "vgg19-bn":
        state, options = _fold_vgg_head(record, state)
    return arch, state, options


def _fold_vgg_head(record: Record, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """torchvision's VGG pools the 512-channel feature map to 7x7 and flattens it (25 088 inputs to
    the first linear layer); bd pools it globally. On a feature map of 1x1 (inputs up to 32 px)
    the 7x7 pool only repeats one value 49 times, so summing the first layer's weights over those
    49 copies gives bd's layer exactly."""
    weight = state.get("classifier.0.weight")
    if weight is None or weight.dim() != 2:
        raise UnsafeModelFile(f"{record.path}: vgg19_bn state dict has no classifier.0.weight matrix")
    if record.image_size > 32:
        raise UnsafeModelFile(
            f"{record.path}: a vgg19_bn at {record.image_size} px has a 7x7-pooled head over a "
            "feature map larger than 1x1, which bd's globally pooled VGG cannot represent exactly"
        )
    channels = weight.shape[1] // 49
    if channels * 49 != weight.shape[1]:
        raise UnsafeModelFile(f"{record.path}: classifier.0.weight has {weight.shape[1]} inputs, not 49 x channels")
    folded = dict(state)
    folded["classifier.0.weight"] = weight.view(weight.shape[0], channels, 49).sum(2).contiguous()
    return folded, {"hidden": int(weight.shape[0])}


# ----------------------------------------------------------------- the trigger the record defines


def resolve_resource(record: Record, relative: str, resource_root: Path | None) -> Path | None:
    """A trigger file named in info.pickle (a path relative to the tool's attack/ folder, e.g.
    ../resource/badnet/trigger_image.png), looked up below `resource_root` or the tool's checkout
    that holds record/<name>/ (never outside those folders)."""
    parts = [p for p in Path(relative).parts if p not in ("..", ".", "/")]
    if "resource" in parts:
        parts = parts[parts.index("resource") + 1 :]
    roots = [resource_root] if resource_root else []
    roots.append(record.folder.parent.parent / "resource")
    for root in roots:
        candidate = (Path(root) / Path(*parts)).resolve() if parts else None
        if candidate and candidate.is_file() and Path(root).resolve() in candidate.parents:
            return candidate
    return None


def pattern_from_info(record: Record, resource_root: Path | None) -> tuple[Tensor, Tensor, str, float] | None:
    """(pattern [C,H,W] 0..255, mask [C,H,W], mode, alpha) for BadNets and Blended records whose
    trigger file can be found; None otherwise."""
    size, channels = record.image_size, record.in_channels
    key = {"badnet": "patch_mask_path", "blended": "attack_trigger_img_path"}.get(record.attack)
    if key is None or key not in record.info:
        return None
    file = resolve_resource(record, str(record.info[key]), resource_root)
    if file is None:
        return None
    with Image.open(file) as im:
        pattern = torch.from_numpy(
            image_array(im.convert("RGB").resize((size, size), Image.BILINEAR))[:channels].astype(np.float32)
        )
    if record.attack == "badnet":
        return pattern * (pattern > 0), (pattern > 0).float(), "replace", 1.0  # AddMaskPatchTrigger
    alpha = float(record.info.get("attack_test_blended_alpha", record.info.get("attack_train_blended_alpha", 0.2)))
    return pattern, torch.ones(channels, size, size), "blend", alpha
