"""ACC, ASR, RA, ARR and RDR on a hand-computed case.

The model is a real (parameter-free) module whose prediction we control through
pixels: it reads the class from pixel (0,0), or from pixel (0,1) when the
bottom-right pixel carries the trigger.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from bd_core.attacks import BadNets
from bd_core.data import DatasetInfo, ImageSet
from bd_core.metrics import arr, evaluate, rdr

INFO = DatasetInfo("hand", tuple("abcd"), (0.5,), (0.25,), hflip=False)


class PixelReader(nn.Module):
    def forward(self, x):
        raw = (x[:, 0] * 0.25 + 0.5) * 255  # undo normalization
        triggered = raw[:, -1, -1] > 250
        cls = torch.where(triggered, raw[:, 0, 1], raw[:, 0, 0]) / 40
        return nn.functional.one_hot(cls.round().long(), 4).float()


def make_case():
    # (true label, class read when clean, class read when triggered)
    rows = [
        (0, 0, 0),  # target-class sample: omitted from ASR and RA
        (0, 1, 0),  # target-class sample, misclassified clean: counts in ACC only
        (1, 1, 0),  # attack succeeds
        (2, 2, 0),  # attack succeeds
        (2, 2, 2),  # recovered
        (3, 3, 1),  # neither target nor true label
        (3, 0, 3),  # clean mistake, recovered when triggered
        (1, 1, 0),  # attack succeeds
    ]
    images = torch.zeros(len(rows), 1, 28, 28, dtype=torch.uint8)
    for i, (_, clean, trig) in enumerate(rows):
        images[i, 0, 0, 0] = clean * 40
        images[i, 0, 0, 1] = trig * 40
    labels = torch.tensor([r[0] for r in rows])
    return ImageSet(images, labels, INFO, "test")


def test_metrics_on_hand_computed_case():
    test = make_case()
    trigger = BadNets(patch=1).fit(test, seed=0)  # 1x1 white pixel at the bottom-right at 28 px
    m = evaluate(PixelReader(), test, trigger, target=0, batch_size=3)
    assert m.acc == pytest.approx(6 / 8)  # rows 1 and 6 are wrong when clean
    assert m.asr == pytest.approx(3 / 6)  # rows 2, 3, 7 of the six non-target rows
    assert m.ra == pytest.approx(2 / 6)  # rows 4 and 6


def test_arr_and_rdr_follow_equations_41_and_42():
    assert arr(0.9, 0.81) == pytest.approx(0.1)
    assert rdr(0.9, 0.45) == pytest.approx(0.5)
    assert arr(0.8, 0.88) == pytest.approx(-0.1)  # accuracy can rise: negative ARR
    assert rdr(0.8, 0.8) == 0.0


def test_evaluation_leaves_a_model_that_still_trains():
    """evaluate runs in inference mode and in channels_last: the model comes back with the same
    weights, in the default layout, and trainable (weights made in inference mode could not be)."""
    from bd_core.data import make_synthetic
    from bd_core.models import create_model

    torch.manual_seed(0)
    test = make_synthetic("test", n_test=40, size=28, channels=1)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, test, BadNets().fit(test, 0), 0, batch_size=16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous() and not v.is_inference(), k
    model.train()
    loss = model(torch.randn(4, 1, 28, 28)).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
