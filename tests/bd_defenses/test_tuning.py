"""`--tune`: a tunable defense's decisive setting chosen from its candidates by the defender's
clean-data signals alone, recorded with the signals that chose it."""

from __future__ import annotations

import copy
import dataclasses
import inspect

import pytest
import torch
from bd_core.data import make_synthetic, mitigation_set
from bd_core.errors import BdError
from bd_core.models import create_model
from bd_defenses import DEFENSES, Context, MitigationData, create_defense, tunable_names, with_tuning
from bd_defenses.tuning import Tuned, choose


def test_every_tunable_defense_lists_its_default_among_ordered_candidates():
    assert {"fp", "anp", "clp", "bnp", "ft", "ft-sam", "nad", "sau", "i-bau", "nc"} <= set(tunable_names())
    for name in tunable_names():
        cls = DEFENSES[name]
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert len(cls.tune) >= 3, name
        assert all(set(c) <= set(fields) for c in cls.tune), name
        assert any(all(fields[k] == v for k, v in c.items()) for c in cls.tune), f"{name}: the default is a candidate"


def test_the_candidates_are_part_of_the_stored_settings():
    """Results made with other candidates are stored under another key, never reused."""
    tuned = create_defense("clp/tuned")
    assert list(dataclasses.asdict(tuned)["candidates"]) == [{"u": 4.0}, {"u": 3.0}, {"u": 2.0}]
    other = Tuned(tuned.inner, candidates=({"u": 1.0}, {"u": 3.0}))
    assert dataclasses.asdict(other) != dataclasses.asdict(tuned)


def test_rule_takes_the_strongest_candidate_within_the_tolerance():
    signals = [{"acc": 0.90}, {"acc": 0.89}, {"acc": 0.80}]
    assert choose(signals, 0.02) == 1  # the last is 10 points below the best
    assert choose(signals, 0.2) == 2
    assert choose([{"acc": 0.5}, {"acc": 0.9}, {"acc": 0.5}], 0.0) == 1  # the best is always allowed


def test_names_and_refusals():
    assert with_tuning("bnp+pbe") == "bnp/tuned+pbe"
    assert create_defense("CLP/Tuned").name == "clp/tuned"
    with pytest.raises(BdError, match="no tunable setting"):
        create_defense("pbe/tuned")
    with pytest.raises(BdError, match="no tunable setting"):
        with_tuning("pbe")
    with pytest.raises(BdError, match="only variant"):
        create_defense("clp/best")


def test_selection_sees_only_the_defenders_data():
    """The API boundary: a tuned defense is called as any defense is, with the model, the clean
    mitigation set and a context that holds run settings only (device, seed, arithmetic)."""
    params = list(inspect.signature(Tuned.__call__).parameters)
    assert params == ["self", "model", "data", "ctx"]
    assert {f.name for f in dataclasses.fields(MitigationData)} == {"clean", "unlabeled"}
    assert {f.name for f in dataclasses.fields(Context)} == {"device", "seed", "record", "precision"}


def test_tuned_clp_records_its_candidates_and_follows_the_rule():
    torch.manual_seed(0)
    clean = mitigation_set(make_synthetic("train", n_train=300, size=28, channels=1), 10, 0)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    defense = create_defense("clp/tuned", {"tolerance": "0.05"})
    ctx = Context(seed=1)
    out = defense(copy.deepcopy(model), MitigationData(clean), ctx)
    tuning = ctx.record["tuning"]
    signals = tuning["candidates"]
    assert [c["settings"] for c in signals] == [{"u": 4.0}, {"u": 3.0}, {"u": 2.0}]
    chosen = signals.index(next(c for c in signals if c["settings"] == tuning["chosen"]))
    assert chosen == choose(signals, 0.05)
    for c in signals:
        assert 0 <= c["acc"] <= 1 and 0 <= c["agreement"] <= 1 and c["entropy"] >= 0 and 0 < c["confidence"] <= 1
    # the result is the chosen candidate applied on its own (all 100 images served as the check set)
    alone = create_defense("clp", tuning["chosen"])(copy.deepcopy(model), MitigationData(clean), Context(seed=1))
    for (name, a), b in zip(out.state_dict().items(), alone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # a milder u prunes no more channels than a stronger one, so the candidates differ as ordered
    pruned = [create_defense("clp", c["settings"])(copy.deepcopy(model), MitigationData(clean), Context(seed=1))
              for c in signals]
    zeros = [sum(int((m.weight == 0).sum()) for m in p.modules() if isinstance(m, torch.nn.BatchNorm2d))
             for p in pruned]
    assert zeros == sorted(zeros)


def test_tuned_on_a_held_out_split_reruns_the_choice_on_all_images():
    """With 100+ held-out images the candidates fit on the rest and the chosen setting then runs on all of D_m."""
    torch.manual_seed(0)
    clean = mitigation_set(make_synthetic("train", n_train=1200, size=28, channels=1), 100, 0)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    ctx = Context(seed=0)
    out = create_defense("bnp/tuned")(copy.deepcopy(model), MitigationData(clean), ctx)
    assert ctx.record["tuning"]["check"].startswith("held-out 200 of 1000")
    alone = create_defense("bnp", ctx.record["tuning"]["chosen"])(copy.deepcopy(model), MitigationData(clean),
                                                                  Context(seed=0))
    for (name, a), b in zip(out.state_dict().items(), alone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
