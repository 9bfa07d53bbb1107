"""Readers for the real on-disk formats of the survey's datasets (and Fashion-MNIST).

Each reader returns (images uint8 [N,C,H,W], labels int64 [N], class names). They
never execute code from the files: CIFAR-10's pickles go through an unpickler that
only rebuilds plain containers and numpy arrays, and never allocate more than the file
could hold: a damaged pickle's length fields are checked against the file first.
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import pickletools
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bd_core.errors import BdError, DataNotFound

# ---------------------------------------------------------------- idx (MNIST family)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzipped or not): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except EOFError:
        raise BdError(f"{path} is truncated (the gzip stream ends early); download or copy it again") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise BdError(f"{path} is not a valid .gz file ({e}); download or copy it again") from None
    except OSError as e:
        raise BdError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise BdError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise BdError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise BdError(f"{images_path} and {labels_path} do not form an image/label pair")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------- CIFAR-10 python batches


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo table from the
# PUT index it reads (a corrupt 4-byte index asks for gigabytes, and a failed read into a
# preallocated bytearray prints an unraisable SystemError past our error handling); the
# Python one keeps its memo in a dict. Its speed is ample for ~20k opcodes per batch.
class _ArrayOnlyUnpickler(pickle._Unpickler):  # noqa: SLF001
    """Rebuilds dicts, lists, bytes and numpy arrays; refuses every other global."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR-10 python batch: dict with b'data' (N x 3072 uint8, RGB planes) and b'labels'."""
    batch = _load_cifar_pickle(path, "batch")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise BdError(f"{path} has no data/labels entries")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise BdError(f"{path}: expected N x 3072 pixels and N labels, got {data.shape} and {len(labels)}")
    return data, list(labels)


def _load_cifar_pickle(path: Path, what: str) -> dict:
    """One CIFAR-10 pickle through the array-only unpickler; every failure is one BdError line."""
    if not path.is_file():
        raise DataNotFound(
            f"{path} is missing: CIFAR-10's cifar-10-batches-py/ needs data_batch_1..5, test_batch "
            "and batches.meta (re-extract cifar-10-python.tar.gz, or pass --download)"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BdError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        _check_lengths_fit(raw)
        content = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any way a damaged or hostile pickle fails: refused, nothing of it ran
        raise BdError(
            f"{path} is not a CIFAR-10 python {what} ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
            "re-extract the dataset"
        ) from None
    if not isinstance(content, dict):
        raise BdError(f"{path} is not a CIFAR-10 python {what} (holds a {type(content).__name__}, not a dict)")
    return content


def _check_lengths_fit(raw: bytes) -> None:
    """Walk the opcodes once without building anything: every counted string, bytes or long
    must lie inside the file, so the unpickler never allocates for a length that cannot be
    there (a BYTEARRAY8 claiming 2**60 bytes in a 300-byte file); raises ValueError otherwise."""
    for _ in pickletools.genops(raw):
        pass


def read_cifar10(folder: Path, train: bool) -> tuple[Tensor, Tensor, list[str]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [read_cifar_batch(folder / n) for n in names]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    classes = _cifar_class_names(folder / "batches.meta")
    return torch.from_numpy(data.copy()), torch.from_numpy(labels), classes


def _cifar_class_names(meta: Path) -> list[str]:
    default = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if not meta.exists():
        return default
    content = _load_cifar_pickle(meta, "metadata file")
    names = content.get(b"label_names", content.get("label_names", default))
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise BdError(f"{meta}: label_names must list the 10 CIFAR-10 classes; re-extract the dataset")
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


# ---------------------------------------------------------------- image folders (GTSRB, Tiny-ImageNet)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one image file to RGB uint8 [3,size,size] (bilinear resize when needed)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BdError(f"cannot decode image {path} ({type(e).__name__}); replace or remove it") from None


def decode_images(paths: list[Path], size: int, progress_label: str) -> Tensor:
    from bd_core.progress import track

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(track(paths, description=progress_label)):
        out[i] = decode_image(p, size)
    return torch.from_numpy(out)


def read_gtsrb_csv(path: Path) -> list[tuple[str, int]]:
    """GTSRB annotation CSV (semicolon separated, header row): Filename ... ClassId."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    if not rows or "Filename" not in rows[0] or "ClassId" not in rows[0]:
        raise BdError(f"{path} is not a GTSRB annotation file (needs Filename and ClassId columns)")
    try:
        return [(r["Filename"], int(r["ClassId"])) for r in rows]
    except (TypeError, ValueError):
        raise BdError(f"{path}: a ClassId is not an integer; the annotation file is damaged") from None


def read_gtsrb(train_dir: Path | None, test_dir: Path | None, test_csv: Path | None, train: bool, size: int = 32):
    if train:
        assert train_dir is not None
        paths: list[Path] = []
        labels: list[int] = []
        for class_dir in sorted(d for d in train_dir.iterdir() if d.is_dir()):
            csvs = sorted(class_dir.glob("GT-*.csv"))
            if csvs:
                entries = read_gtsrb_csv(csvs[0])
            else:  # torchvision's layout has no per-class CSV: the folder is the class
                if not class_dir.name.isdigit():
                    raise BdError(
                        f"{class_dir}: a GTSRB class folder is named by its class number (e.g. 00012); "
                        "move or remove this folder"
                    )
                entries = [(p.name, int(class_dir.name)) for p in sorted(class_dir.glob("*.ppm"))]
            paths += [class_dir / name for name, _ in entries]
            labels += [cid for _, cid in entries]
        label_desc = "decoding GTSRB train"
    else:
        assert test_dir is not None and test_csv is not None
        entries = read_gtsrb_csv(test_csv)
        paths = [test_dir / name for name, _ in entries]
        labels = [cid for _, cid in entries]
        label_desc = "decoding GTSRB test"
    images = decode_images(paths, size, label_desc)
    return images, torch.tensor(labels, dtype=torch.int64), [str(i) for i in range(43)]


def read_tiny_imagenet(root: Path, train: bool, size: int = 64):
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    if train:
        paths, labels = [], []
        for w in wnids:
            files = sorted((root / "train" / w / "images").glob("*.JPEG"))
            paths += files
            labels += [index[w]] * len(files)
    else:
        paths, labels = [], []
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in index:
                raise BdError(f"val_annotations.txt names {fields[1]}, which is not in wnids.txt")
            paths.append(root / "val" / "images" / fields[0])
            labels.append(index[fields[1]])
    images = decode_images(paths, size, f"decoding Tiny-ImageNet {'train' if train else 'val'}")
    return images, torch.tensor(labels, dtype=torch.int64), _tiny_class_names(root, wnids)


def _tiny_class_names(root: Path, wnids: list[str]) -> list[str]:
    words = root / "words.txt"
    if not words.exists():
        return wnids
    table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    return [table.get(w, w).split(",")[0].strip() for w in wnids]
