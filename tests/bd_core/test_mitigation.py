"""Mitigation sets: exact, stratified, reproducible, disjoint from test, clear errors."""

from __future__ import annotations

import pytest
import torch
from bd_core.data import make_synthetic, mitigation_set
from bd_core.errors import InvalidRequest


@pytest.fixture(scope="module")
def train():
    return make_synthetic("train", num_classes=5, n_train=300, size=28, channels=1)


@pytest.mark.parametrize("spc", [1, 2, 10, 60])
def test_exactly_spc_per_class(train, spc):
    m = mitigation_set(train, spc, partition=0)
    assert m.class_counts().tolist() == [spc] * 5
    assert len(set(m.source_index.tolist())) == 5 * spc  # no row twice
    assert torch.equal(m.images, train.images[m.source_index])  # rows really come from the training split
    assert torch.equal(m.labels, train.labels[m.source_index])


def test_reproducible_and_partitions_differ(train):
    a, b = mitigation_set(train, 10, 3), mitigation_set(train, 10, 3)
    assert torch.equal(a.source_index, b.source_index)
    others = [set(mitigation_set(train, 10, p).source_index.tolist()) for p in range(4)]
    assert len({frozenset(s) for s in others}) == 4


def test_smaller_spc_is_nested_in_larger(train):
    small = set(mitigation_set(train, 2, 1).source_index.tolist())
    large = set(mitigation_set(train, 10, 1).source_index.tolist())
    assert small < large


def test_never_drawn_from_the_test_split():
    test = make_synthetic("test", num_classes=5, n_test=100)
    with pytest.raises(InvalidRequest, match="training split"):
        mitigation_set(test, 2, 0)


@pytest.mark.parametrize(
    "spc, message", [(0, ">= 1"), (-3, ">= 1"), (61, "spc=61 is larger than class"), (2.5, ">= 1")]
)
def test_impossible_requests_are_refused_not_changed(train, spc, message):
    with pytest.raises(InvalidRequest, match=message):
        mitigation_set(train, spc, 0)


def test_negative_partition_is_refused(train):
    with pytest.raises(InvalidRequest, match="partition"):
        mitigation_set(train, 2, -1)


def test_augmented_pixels_are_crops_and_flips_of_the_images(train):
    """Pixel-space defenses (NPD) perturb augmented [0, 1] images, as the reference loaders' training
    transform gives them: each output image is its own zero-padded image, cropped at the drawn
    offsets and flipped where drawn, and the draws are reproducible from the generator."""
    import torch.nn.functional as F
    from bd_core.data.augment import Augment
    from bd_core.data.pixels import Pixels

    pixels = Pixels.of(mitigation_set(train, spc=4, partition=0))
    augment, idx = Augment(padding=4, hflip=True), torch.arange(len(pixels))
    out = pixels.augmented(idx, augment, torch.Generator().manual_seed(3))
    offsets, flip = augment.draw(len(idx), torch.Generator().manual_seed(3))
    padded = F.pad(pixels.x, (4, 4, 4, 4))
    h, w = pixels.x.shape[2:]
    for i, ((dy, dx), flipped) in enumerate(zip(offsets.tolist(), flip.tolist(), strict=True)):
        expected = padded[i, :, dy : dy + h, dx : dx + w]
        torch.testing.assert_close(out[i], expected.flip(-1) if flipped else expected, atol=1e-6, rtol=0)
    assert flip.any() and not flip.all() and len({tuple(o) for o in offsets.tolist()}) > 1  # the draws vary
