"""Attack-training throughput: `fit` on a quick-width (0.25) PreAct-ResNet18, 28x28 gray images,
batches of 128 with the training augmentation, in channels_last (what attack training uses)
against the default layout, in one run."""

from __future__ import annotations

import pytest
import torch
from bd_core.data import make_synthetic
from bd_core.data.augment import Augment
from bd_core.data.batches import clean_batches
from bd_core.models import create_model
from bd_core.train import fit

N_TRAIN = 1_280  # ten batches


@pytest.fixture(scope="module")
def train():
    return make_synthetic("train", n_train=N_TRAIN, size=28, channels=1)


@pytest.mark.parametrize("layout", ["channels_last", "default_layout_baseline"])
@pytest.mark.benchmark(group="attack training, quick PreAct-ResNet18, 1 280 images")
def test_fit(benchmark, train, layout):
    make_batch = clean_batches(train, Augment.for_dataset(train.info))

    def one_epoch():
        torch.manual_seed(0)
        model = create_model("preact-resnet18", 10, 1, 28, 0.25)
        return fit(
            model, make_batch, N_TRAIN, epochs=1, batch_size=128, lr=0.05, channels_last=layout == "channels_last"
        )

    losses = benchmark.pedantic(one_epoch, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images/s"] = round(N_TRAIN / benchmark.stats.stats.median)
    assert losses[0] > 0
