"""FT and the defense API: registry names, validated overrides, a real repair on synthetic data."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from bd_core.data import make_synthetic, mitigation_set
from bd_core.errors import BdError
from bd_core.metrics import evaluate
from bd_defenses import Context, MitigationData, canonical_defense, create_defense, describe

pytestmark = pytest.mark.learned  # asserts on training outcomes: see docs/decisions.md


def test_names_and_description():
    assert canonical_defense("FT") == "ft"
    d = describe("ft")
    assert d["family"] == "fine-tuning" and d["hyperparameters"]["epochs"] == 100 and d["hyperparameters"]["lr"] == 0.01


def test_overrides_are_typed_and_checked():
    assert create_defense("ft", {"epochs": "3", "lr": "0.5"}).epochs == 3
    with pytest.raises(BdError, match="valid: epochs=100"):
        create_defense("ft", {"epoch": "3"})
    with pytest.raises(BdError, match="epochs expects int"):
        create_defense("ft", {"epochs": "many"})
    with pytest.raises(BdError, match=re.escape("lr must be in (0, 1], got -1")):
        create_defense("ft", {"lr": "-1"})
    with pytest.raises(BdError, match="unknown defense 'nope'; valid: anp, awm"):
        create_defense("nope")


def test_mitigation_split_is_stratified_and_disjoint():
    clean = mitigation_set(make_synthetic("train", n_train=500), 10, 0)
    fit, held = MitigationData(clean).split(0.2, seed=0)
    assert held.class_counts().tolist() == [2] * 10 and fit.class_counts().tolist() == [8] * 10
    assert not set(fit.source_index.tolist()) & set(held.source_index.tolist())


def test_ft_lowers_asr_of_a_backdoored_model(backdoored, synthetic_data):
    spec, attacked, _, _ = backdoored
    data = synthetic_data
    before = {k: v.clone() for k, v in attacked.model.state_dict().items()}
    pre = evaluate(attacked.model, data.test, attacked.trigger, 0)
    clean = mitigation_set(data.train, 20, 0)
    ctx = Context(seed=0)
    defense = create_defense("ft", {"epochs": "30", "lr": "0.05"})
    model = defense(copy.deepcopy(attacked.model), MitigationData(clean), ctx)
    post = evaluate(model, data.test, attacked.trigger, 0)
    assert pre.asr > 0.9 and post.asr < pre.asr - 0.3 and post.acc > 0.85
    assert ctx.record["epochs"] == 30 and ctx.record["final_loss"] < ctx.record["first_loss"]
    for k, v in attacked.model.state_dict().items():  # the defense worked on the copy
        assert torch.equal(v, before[k]), k
