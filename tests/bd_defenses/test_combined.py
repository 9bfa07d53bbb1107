"""Combined defenses (`bnp+ft`): names, per-part settings, and the sequence itself."""

from __future__ import annotations

import copy

import pytest
import torch
from bd_core.data import make_synthetic
from bd_core.errors import BdError
from bd_core.models import create_model
from bd_defenses import Context, MitigationData, canonical_defense, create_defense, describe, family_of
from bd_defenses.combined import Combined


def test_names_are_canonical_parts_in_order():
    assert canonical_defense("BNP + ft") == "bnp+ft"
    assert canonical_defense("ft_sam+i_bau") == "ft-sam+i-bau"
    assert canonical_defense("ft+clp") == "ft+clp"  # order is the sequence: not sorted
    for bad in ("ft+", "+ft", "ft++clp", "ft+nosuch"):
        with pytest.raises(BdError):
            canonical_defense(bad)


def test_settings_go_to_the_part_they_name():
    d = create_defense("clp+ft", {"clp.u": "2.5", "ft.epochs": "3"})
    assert isinstance(d, Combined) and d.name == "clp+ft"
    clp, ft = d.parts
    assert clp.u == 2.5 and ft.epochs == 3
    assert ft.lr == create_defense("ft").lr  # untouched settings keep the paper's defaults
    with pytest.raises(BdError, match="must name its defense"):
        create_defense("clp+ft", {"epochs": "3"})
    with pytest.raises(BdError, match="not one of its parts"):
        create_defense("clp+ft", {"bnp.u": "3"})
    with pytest.raises(BdError, match="no setting"):
        create_defense("clp+ft", {"ft.nosuch": "1"})


def test_a_single_defense_takes_its_settings_with_or_without_its_name():
    """`bd defend --defense anp --set anp.iterations=50` is how combinations spell settings; a
    single defense accepts it too (also by alias), and a setting naming another defense fails."""
    assert create_defense("anp", {"anp.iterations": "50"}).iterations == 50
    assert create_defense("mm-bd", {"mmbd.epochs": "3", "lr": "0.01"}).epochs == 3
    assert create_defense("ft/tuned", {"ft.epochs": "4"}).inner.epochs == 4
    with pytest.raises(BdError, match="names ft, not anp"):
        create_defense("anp", {"ft.epochs": "3"})
    with pytest.raises(BdError, match="no setting"):
        create_defense("anp", {"anp.nosuch": "1"})


def test_registry_facts_of_a_combination():
    info = describe("bnp+ft")
    assert info["family"] == "combined" == family_of("bnp+ft")
    assert info["components"] == ["bnp", "ft"]
    assert info["hyperparameters"]["ft.epochs"] == describe("ft")["hyperparameters"]["epochs"]
    assert family_of("clp") == "pruning" and family_of("not-a-defense") == "other"


def test_sequence_equals_the_parts_applied_by_hand():
    """clp+ft is exactly FT applied to CLP's output, each with the context seed of a single run,
    and the record keeps what each part reported."""
    data = MitigationData(make_synthetic("train", n_train=60, size=28, channels=1))
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    settings = {"clp.u": "1.0", "ft.epochs": "2"}

    ctx = Context(seed=5)
    combined = create_defense("clp+ft", settings)(copy.deepcopy(model), data, ctx)

    by_hand = copy.deepcopy(model)
    clp_ctx, ft_ctx = Context(seed=5), Context(seed=5)
    by_hand = create_defense("clp", {"u": "1.0"})(by_hand, data, clp_ctx)
    torch.manual_seed(0)  # FT's own draws come from its context generator, not the global RNG
    by_hand = create_defense("ft", {"epochs": "2"})(by_hand, data, ft_ctx)

    for (name, a), b in zip(combined.state_dict().items(), by_hand.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert ctx.record["components"] == ["clp", "ft"]
    assert [s["defense"] for s in ctx.record["steps"]] == ["clp", "ft"]
    assert {k: v for k, v in ctx.record["steps"][0].items() if k not in ("defense", "seconds")} == clp_ctx.record
    assert clp_ctx.record["pruned"] > 0  # u = 1 prunes on a random network: the sequence is not FT alone


def test_unlabeled_data_is_asked_for_through_the_defense_api():
    """The runner loads OOD images only when a defense (or a part of a combination) asks for them."""
    assert create_defense("ft").unlabeled_request() is None
    assert create_defense("bcu").unlabeled_request() is None  # no dataset named: BCU refuses when run
    assert create_defense("bcu", {"ood_dataset": "mnist", "ood_images": "300"}).unlabeled_request() == ("mnist", 300)
    assert create_defense("bnp+bcu", {"bcu.ood_dataset": "mnist"}).unlabeled_request() == ("mnist", 5000)
    assert create_defense("bnp+ft").unlabeled_request() is None
    two = create_defense("bcu+bcu", {"bcu.ood_dataset": "mnist"})
    assert two.unlabeled_request() == ("mnist", 5000)  # the same request twice is one request
