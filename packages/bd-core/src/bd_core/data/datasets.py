"""Dataset registry: where each dataset lives on disk, how to decode it, its constants.

`load_dataset(name, split)` finds the files (BD_DATA, Debian's install path, the
layout torchvision's downloaders produce), decodes them once into a cached
safetensors file, and returns an ImageSet. Missing data raises DataNotFound with
one line that says where to put the files or which flag to pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bd_core.data import formats
from bd_core.data.imageset import DatasetInfo, ImageSet, content_fingerprint
from bd_core.data.synthetic import make_synthetic
from bd_core.errors import BdError, DataNotFound
from bd_core.paths import cache_root, data_root
from bd_core.progress import log
from bd_core.registry import Registry
from bd_core.safefile import load_tensors, save_tensors

SPLITS = ("train", "test")
CACHE_FORMAT = 1


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    layout: str  # what the user must put on disk, for the error message
    locate: Callable[[list[Path]], Path | None]  # first root holding the files, or None
    read: Callable[[Path, bool], tuple]  # (root, train) -> (images, labels, classes)
    download: Callable[[Path], None] | None = None
    cached: bool = True  # decode once into the cache (not worth it for idx files)
    note: str = ""


def _candidates(*subdirs: str) -> Callable[[list[Path]], Path | None]:
    def locate(roots: list[Path]) -> Path | None:
        for root in roots:
            for sub in subdirs:
                if (root / sub).exists():
                    return root / sub
        return None

    return locate


# ------------------------------------------------------------------ Fashion-MNIST

_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
DEBIAN_DATASETS = Path("/usr/share/datasets")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _locate_fmnist(roots: list[Path]) -> Path | None:
    for root in roots:
        for sub in ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist", "."):
            folder = root / sub
            if all(_find_idx(folder, s) for s in _FMNIST_FILES[True] + _FMNIST_FILES[False]):
                return folder
    return None


def _read_fmnist(folder: Path, train: bool):
    img_stem, lab_stem = _FMNIST_FILES[train]
    images, labels = formats.read_mnist_pair(_find_idx(folder, img_stem), _find_idx(folder, lab_stem))
    return images, labels, list(FASHION_CLASSES)


def _download_torchvision(cls_name: str, **kwargs) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets as tvd

        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            if cls_name == "GTSRB":
                getattr(tvd, cls_name)(str(root), split="train" if train else "test", download=True, **kwargs)
            else:
                getattr(tvd, cls_name)(str(root), train=train, download=True, **kwargs)

    return download


# ------------------------------------------------------------------ GTSRB


def _gtsrb_dirs(base: Path) -> tuple[Path | None, Path | None, Path | None]:
    """Train dir, test image dir and test CSV for the official or torchvision layout."""
    train = next((d for d in (base / "Final_Training" / "Images", base / "Training") if d.is_dir()), None)
    test = base / "Final_Test" / "Images"
    csvs = [base / "GT-final_test.csv", test / "GT-final_test.csv", base.parent / "GT-final_test.csv"]
    test_csv = next((c for c in csvs if c.exists()), None)
    return train, test if test.is_dir() else None, test_csv


def _locate_gtsrb(roots: list[Path]) -> Path | None:
    for root in roots:
        for sub in ("GTSRB", "gtsrb/GTSRB", "gtsrb"):
            train, test, test_csv = _gtsrb_dirs(root / sub)
            if train and test and test_csv:
                return root / sub
    return None


def _read_gtsrb(base: Path, train: bool):
    train_dir, test_dir, test_csv = _gtsrb_dirs(base)
    return formats.read_gtsrb(train_dir, test_dir, test_csv, train)


# ------------------------------------------------------------------ registry

SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mean=(0.2860,),
        std=(0.3530,),
        hflip=False,
        layout="the four idx files (train-images-idx3-ubyte[.gz], ...) in $BD_DATA/fashion-mnist "
        "or /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)",
        locate=_locate_fmnist,
        read=_read_fmnist,
        download=_download_torchvision("FashionMNIST"),
        cached=False,
        note="not in the survey: Fashion-MNIST is the offline stand-in (28x28 gray, 10 classes)",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        hflip=True,
        layout="cifar-10-batches-py/ (data_batch_1..5, test_batch) under $BD_DATA",
        locate=_candidates("cifar-10-batches-py"),
        read=formats.read_cifar10,
        download=_download_torchvision("CIFAR10"),
    ),
    "gtsrb": DatasetSpec(
        name="gtsrb",
        mean=(0.3403, 0.3121, 0.3214),
        std=(0.2724, 0.2608, 0.2669),
        hflip=False,  # flipping changes the meaning of many traffic signs
        layout="GTSRB/Final_Training/Images/<class>/*.ppm and GTSRB/Final_Test/Images + GT-final_test.csv under "
        "$BD_DATA",
        locate=_locate_gtsrb,
        read=_read_gtsrb,
        download=_download_torchvision("GTSRB"),
        note="images resized to 32x32 as in BackdoorBench",
    ),
    "tiny-imagenet": DatasetSpec(
        name="tiny-imagenet",
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2302, 0.2265, 0.2262),
        hflip=True,
        layout="tiny-imagenet-200/ (wnids.txt, train/<wnid>/images, val/val_annotations.txt) under $BD_DATA",
        locate=_candidates("tiny-imagenet-200"),
        read=formats.read_tiny_imagenet,
    ),
}
DATASETS: Registry[DatasetSpec | None] = Registry("dataset")
for _name, _spec in SPECS.items():
    DATASETS.add(_name, _spec)
DATASETS.add("synthetic", None)  # made in memory by make_synthetic, no files
for _alias, _name in {"fmnist": "fashion-mnist", "tiny": "tiny-imagenet", "tiny-imagenet-200": "tiny-imagenet"}.items():
    DATASETS.alias(_alias, _name)
DATASET_NAMES = tuple(DATASETS)
canonical_dataset = DATASETS.canonical


def search_roots(root: Path | None = None) -> list[Path]:
    roots = [root] if root else []
    return roots + [data_root(), DEBIAN_DATASETS]


def load_dataset(
    name: str, split: str, *, root: Path | None = None, download: bool = False, **synthetic_options
) -> ImageSet:
    """Load one split ('train' or 'test') of a dataset as a resident ImageSet."""
    if split not in SPLITS:
        raise BdError(f"split must be one of {SPLITS}, got {split!r}")
    name = canonical_dataset(name)
    if name == "synthetic":
        return make_synthetic(split, **synthetic_options)
    spec = SPECS[name]
    roots = search_roots(root)
    folder = spec.locate(roots)
    if folder is None and download:
        if spec.download is None:
            raise DataNotFound(f"{name} has no downloader: put {spec.layout}")
        spec.download(roots[0])
        folder = spec.locate(roots)
    if folder is None:
        hint = " or pass --download" if spec.download else ""
        raise DataNotFound(f"{name} not found: put {spec.layout}{hint}")
    images, labels, classes, fingerprint = _read_cached(spec, folder, split == "train")
    info = DatasetInfo(name, tuple(classes), spec.mean, spec.std, spec.hflip, spec.note)
    try:
        return ImageSet(images, labels, info, split, fingerprint=fingerprint)
    except ValueError as e:
        raise BdError(f"{name} in {folder} is malformed: {e}") from None


def _read_cached(spec: DatasetSpec, folder: Path, train: bool) -> tuple[Tensor, Tensor, list[str], str]:
    """(images, labels, class names, content fingerprint): decoded once into the cache, where the
    fingerprint is kept too; a damaged cache file is rebuilt from the source files."""
    if not spec.cached:
        images, labels, classes = spec.read(folder, train)
        return images, labels, classes, content_fingerprint(images, labels)
    split = "train" if train else "test"
    stamp = hashlib.sha256(f"{CACHE_FORMAT}:{folder.resolve()}:{folder.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    path = cache_root() / "datasets" / f"{spec.name}-{split}-{stamp}.safetensors"
    if path.exists():
        try:
            tensors, metadata = load_tensors(path)
            images, labels = tensors["images"], tensors["labels"]
            classes, fingerprint = json.loads(metadata["classes"]), metadata["fingerprint"]
            if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != (len(images),):
                raise ValueError("unexpected tensor shapes")
            return images, labels, classes, fingerprint
        except (BdError, KeyError, ValueError, TypeError) as e:
            log(
                f"the cached {spec.name} {split} set {path} is damaged ({str(e)[:80]}); decoding it again from {folder}"
            )
    images, labels, classes = spec.read(folder, train)
    fingerprint = content_fingerprint(images, labels)
    save_tensors(
        path, {"images": images, "labels": labels}, {"classes": json.dumps(classes), "fingerprint": fingerprint}
    )
    return images, labels, classes, fingerprint
