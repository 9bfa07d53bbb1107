"""One naming rule for attacks, architectures, datasets and defenses (bd_core.registry)."""

from __future__ import annotations

import pytest
from bd_core.attacks import ATTACKS, canonical_attack
from bd_core.data import DATASET_NAMES, canonical_dataset
from bd_core.errors import BdError
from bd_core.models import MODELS, canonical_model
from bd_core.registry import Registry
from bd_defenses import DEFENSES, canonical_defense


@pytest.mark.parametrize(
    "resolve, typed, canonical",
    [
        (canonical_attack, "Low_Frequency", "lf"),
        (canonical_attack, "BadNet", "badnets"),
        (canonical_model, "VGG 19", "vgg19-bn"),
        (canonical_model, "preact_resnet18", "preact-resnet18"),
        (canonical_dataset, "Fashion_MNIST", "fashion-mnist"),
        (canonical_dataset, "tiny-imagenet-200", "tiny-imagenet"),
        (canonical_defense, "FT_SAM", "ft-sam"),
        (canonical_defense, "ibau", "i-bau"),
    ],
)
def test_case_dashes_underscores_and_spaces_do_not_matter(resolve, typed, canonical):
    assert resolve(typed) == canonical


@pytest.mark.parametrize(
    "resolve, registry, kind",
    [
        (canonical_attack, ATTACKS, "attack"),
        (canonical_model, MODELS, "architecture"),
        (canonical_dataset, DATASET_NAMES, "dataset"),
        (canonical_defense, DEFENSES, "defense"),
    ],
)
def test_an_unknown_name_is_one_line_listing_every_valid_one(resolve, registry, kind):
    with pytest.raises(BdError) as err:
        resolve("no-such-thing")
    message = str(err.value)
    assert message.startswith(f"unknown {kind} 'no-such-thing'; valid: ") and "\n" not in message
    assert all(name in message for name in registry)


def test_registry_reads_like_a_mapping_and_forgets_what_it_pops():
    r: Registry[int] = Registry("widget", hint=" (try: one)")
    r.add("one", 1, aliases=("uno",))
    r.add("two-x", 2)
    assert dict(r) == {"one": 1, "two-x": 2} and len(r) == 2 and "one" in r
    assert r.lookup("UNO") == 1 and r.canonical("two_x") == "two-x"
    assert r.pop("one") == 1 and list(r) == ["two-x"]
    with pytest.raises(BdError, match=r"unknown widget 'uno'; valid: two-x \(try: one\)"):
        r.canonical("uno")
    with pytest.raises(KeyError):
        r.alias("dos", "two")
