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


def test_constraint_settings_at_their_defaults_keep_fts_objective_and_its_keys():
    from bd_cli.runner import ExperimentSpec
    from bd_core.attacked import AttackSpec
    from bd_defenses import settings_added_since

    attack = AttackSpec("synthetic", "preact-resnet18", "badnets", 0.1, data="0123456789abcdef")
    default = ExperimentSpec(attack, "ft", 10, 0).config()["defense_settings"]
    assert "anchor" not in default and "update" not in default  # stored FT results keep their keys
    assert settings_added_since("ft", default) == []  # and are not flagged as an older FT
    anchored = ExperimentSpec(attack, "ft", 10, 0, {"anchor": "0.5", "update": "bn+head"}).config()
    assert anchored["defense_settings"]["anchor"] == 0.5 and anchored["defense_settings"]["update"] == "bn+head"
    combined = ExperimentSpec(attack, "bnp+ft", 10, 0).config()["defense_settings"]
    assert "anchor" not in combined["parts"][1]
    with pytest.raises(BdError, match="update must be one of all, bn\\+head, got 'convs'"):
        create_defense("ft", {"update": "convs"})


def _ft(backdoored, synthetic_data, **settings):
    _, attacked, _, _ = backdoored
    clean = mitigation_set(synthetic_data.train, 10, 0)
    ctx = Context(seed=0)
    overrides = {"epochs": "8", "lr": "0.05", **{k: str(v) for k, v in settings.items()}}
    model = create_defense("ft", overrides)(copy.deepcopy(attacked.model), MitigationData(clean), ctx)
    return attacked.model, model, ctx.record


def test_anchor_keeps_the_weights_near_the_attacked_models(backdoored, synthetic_data):
    _, _, free = _ft(backdoored, synthetic_data)
    _, _, anchored = _ft(backdoored, synthetic_data, anchor=50)
    assert anchored["distance_from_attacked"] < 0.5 * free["distance_from_attacked"]
    assert free["trained_parameters"] == anchored["trained_parameters"]


def test_bn_and_head_update_trains_nothing_else(backdoored, synthetic_data):
    import torch.nn as nn
    from bd_core.models import anatomy

    start, model, record = _ft(backdoored, synthetic_data, update="bn+head")
    head_name, _ = anatomy(model).classifier
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    changed = {
        n
        for (n, p), (_, p0) in zip(model.named_parameters(), start.named_parameters(), strict=True)
        if not torch.equal(p, p0)
    }
    trained = {n for n in changed if n.rsplit(".", 1)[0] in norms or n.startswith(head_name + ".")}
    assert changed and changed == trained  # every change in a BatchNorm or the classifier
    assert any(n.startswith(head_name + ".") for n in changed)
    assert record["trained_parameters"] < sum(p.numel() for p in model.parameters()) / 10
