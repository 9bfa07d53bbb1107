"""Writers of small files in the real on-disk formats, for loader tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_fashion_mnist(folder: Path, n_train: int, n_test: int, gz: bool, rng: np.random.Generator):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (images, labels)
    return out


def write_cifar10(folder: Path, per_batch: int, rng: np.random.Generator):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f)
    return batches


def write_gtsrb_official(root: Path, classes: list[int], per_class: int, n_test: int, rng: np.random.Generator):
    """GTSRB/Final_Training/Images/<5-digit class>/<...>.ppm + GT-<class>.csv; Final_Test + GT-final_test.csv."""
    base = root / "GTSRB"
    train_images = {}
    for cid in classes:
        d = base / "Final_Training" / "Images" / f"{cid:05d}"
        d.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for k in range(per_class):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            name = f"00000_{k:05d}.ppm"
            Image.fromarray(arr).save(d / name)
            rows.append(f"{name};32;32;5;5;27;27;{cid}")
            train_images[(cid, k)] = arr
        (d / f"GT-{cid:05d}.csv").write_text("\n".join(rows) + "\n")
    test_dir = base / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    test = []
    for k in range(n_test):
        arr = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)  # real GTSRB images vary in size
        cid = classes[k % len(classes)]
        Image.fromarray(arr).save(test_dir / f"{k:05d}.ppm")
        rows.append(f"{k:05d}.ppm;36;40;5;5;30;35;{cid}")
        test.append((arr, cid))
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return train_images, test


def write_tiny_imagenet(root: Path, wnids: list[str], per_class: int, rng: np.random.Generator):
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {i}, other name" for i, w in enumerate(wnids)) + "\n")
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(_smooth(rng)).save(d / f"{w}_{k}.JPEG", format="JPEG", quality=95)
    val = base / "val" / "images"
    val.mkdir(parents=True)
    lines, truth = [], []
    for k in range(len(wnids) * 2):
        w = wnids[(k * 3) % len(wnids)]
        arr = _smooth(rng)
        Image.fromarray(arr).save(val / f"val_{k}.JPEG", format="JPEG", quality=95)
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
        truth.append((arr, wnids.index(w)))
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return truth


def _smooth(rng: np.random.Generator) -> np.ndarray:
    """A smooth image, so JPEG round-trips it closely."""
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((64, 64), Image.BILINEAR))
