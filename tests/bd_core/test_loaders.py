"""Every loader on small files written in the dataset's real on-disk format."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from bd_core.data import load_dataset
from bd_core.data.datasets import canonical_dataset
from bd_core.errors import BdError, DataNotFound
from formats_writers import (
    write_cifar10,
    write_fashion_mnist,
    write_gtsrb_official,
    write_tiny_imagenet,
)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    written = write_fashion_mnist(tmp_path / "fashion-mnist", 30, 20, gz, np.random.default_rng(0))
    train = load_dataset("fashion-mnist", "train", root=tmp_path)
    test = load_dataset("fmnist", "test", root=tmp_path)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert np.array_equal(train.images[:, 0].numpy(), written["train"][0])
    assert np.array_equal(test.labels.numpy(), written["t10k"][1])
    assert train.info.num_classes == 10 and train.info.hflip is False


def test_idx_with_bad_magic_is_a_clear_error(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_fashion_mnist(folder, 4, 4, False, np.random.default_rng(0))
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78garbage")
    with pytest.raises(BdError, match="not an idx file"):
        load_dataset("fashion-mnist", "train", root=tmp_path)


def test_cifar10_python_batches(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", 6, np.random.default_rng(1))
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("CIFAR-10", "test", root=tmp_path)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    # row-major RGB planes: 1024 red, 1024 green, 1024 blue values per image
    assert np.array_equal(train.images[6].numpy().reshape(-1), data[0])
    assert train.labels[6:12].tolist() == labels
    assert train.info.classes[0] == "airplane" and train.info.hflip is True
    # decoded once, then served from the cache
    again = load_dataset("cifar10", "train", root=tmp_path)
    assert torch.equal(again.images, train.images)


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", 2, np.random.default_rng(1))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(BdError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "test", root=tmp_path)


# A damaged pickle's length fields are checked against the file before anything is built:
# each of these used to ask for gigabytes (and, for BYTEARRAY8, printed an unraisable
# SystemError past the one-line error) from a file of a few bytes.
@pytest.mark.parametrize(
    "body, words",
    [
        (b"\x96" + struct.pack("<Q", 2**60) + b"ab.", "bytearray8, but only 3 remain"),  # BYTEARRAY8
        (b"\x8d" + struct.pack("<Q", 2**62) + b"ab.", "unicodestring8, but only 3 remain"),  # BINUNICODE8
        (b"\x8e" + struct.pack("<Q", 2**61) + b"ab.", "bytes8, but only 3 remain"),  # BINBYTES8
        # a PUT index of 4e9 made the C unpickler size its memo table for 8e9 entries
        (b"}\x94r" + struct.pack("<I", 0xFFFFFFF0) + b".", "has no data/labels entries"),
    ],
)
def test_cifar_lengths_beyond_the_file_are_one_clear_error(tmp_path, body, words):
    write_cifar10(tmp_path / "cifar-10-batches-py", 2, np.random.default_rng(1))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04" + body)
    with pytest.raises(BdError, match=words):
        load_dataset("cifar10", "test", root=tmp_path)


def test_gtsrb_official_layout(tmp_path):
    train_images, test = write_gtsrb_official(tmp_path, [0, 1, 42], 3, 5, np.random.default_rng(2))
    train = load_dataset("gtsrb", "train", root=tmp_path)
    assert train.images.shape == (9, 3, 32, 32) and train.info.num_classes == 43
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 42, 42, 42]
    # 32x32 ppm is lossless and not resized: pixels survive exactly
    assert np.array_equal(train.images[0].numpy().transpose(1, 2, 0), train_images[(0, 0)])
    tst = load_dataset("gtsrb", "test", root=tmp_path)
    assert tst.images.shape == (5, 3, 32, 32)  # resized from 36x40
    assert tst.labels.tolist() == [c for _, c in test]


def test_gtsrb_torchvision_layout(tmp_path):
    rng = np.random.default_rng(3)
    write_gtsrb_official(tmp_path / "tmp", [3], 2, 2, rng)
    base = tmp_path / "gtsrb" / "GTSRB"
    base.mkdir(parents=True)
    (tmp_path / "tmp" / "GTSRB" / "Final_Training" / "Images").rename(base / "Training")
    (tmp_path / "tmp" / "GTSRB" / "Final_Test").rename(base / "Final_Test")
    (tmp_path / "tmp" / "GTSRB" / "GT-final_test.csv").rename(tmp_path / "gtsrb" / "GT-final_test.csv")
    for csv in (base / "Training").glob("*/GT-*.csv"):
        csv.unlink()  # torchvision's training folders carry no CSV: the folder name is the class
    train = load_dataset("gtsrb", "train", root=tmp_path)
    assert train.labels.tolist() == [3, 3]
    assert len(load_dataset("gtsrb", "test", root=tmp_path)) == 2


def test_tiny_imagenet_folders(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    truth = write_tiny_imagenet(tmp_path, wnids, 2, np.random.default_rng(4))
    train = load_dataset("tiny-imagenet", "train", root=tmp_path)
    assert train.images.shape == (6, 3, 64, 64) and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.info.classes == ("thing 0", "thing 1", "thing 2")
    val = load_dataset("tiny", "test", root=tmp_path)
    assert val.labels.tolist() == [label for _, label in truth]
    err = np.abs(val.images[0].numpy().transpose(1, 2, 0).astype(int) - truth[0][0].astype(int))
    assert err.mean() < 3  # JPEG at quality 95 on a smooth image


@pytest.mark.parametrize(
    "name, hint",
    [("cifar10", "cifar-10-batches-py"), ("gtsrb", "Final_Training"), ("tiny-imagenet", "tiny-imagenet-200")],
)
def test_missing_dataset_is_one_line_saying_where(tmp_path, monkeypatch, name, hint):
    monkeypatch.setenv("BD_DATA", str(tmp_path))
    with pytest.raises(DataNotFound) as info:
        load_dataset(name, "train", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and hint in message and "not found" in message
    assert ("--download" in message) == (name != "tiny-imagenet")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(BdError, match="valid: fashion-mnist, cifar10, gtsrb, tiny-imagenet, synthetic"):
        canonical_dataset("mnist")


def test_synthetic_is_deterministic_and_split_specific():
    a = load_dataset("synthetic", "train", num_classes=4, channels=1, size=28, n_train=40)
    b = load_dataset("synthetic", "train", num_classes=4, channels=1, size=28, n_train=40)
    t = load_dataset("synthetic", "test", num_classes=4, channels=1, size=28, n_test=40)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, t.images)
    assert a.images.shape == (40, 1, 28, 28) and a.class_counts().tolist() == [10, 10, 10, 10]
