"""Every registered defense runs on all five architectures (tiny widths, synthetic 1- and
3-channel data) and is deterministic under a seed, or, where its criterion needs a layer type
the architecture lacks (BatchNorm or convolutions on the ViT), refuses with one line."""

from __future__ import annotations

import copy

import pytest
import torch
from bd_core.data import make_synthetic, mitigation_set
from bd_core.data.imageset import as_unlabeled
from bd_core.errors import BdError
from bd_core.models import MODELS, canonical_model, create_model
from bd_defenses import DEFENSES, Context, MitigationData, create_defense

# the fewest epochs/iterations that still run every phase of each method
SHORT = {
    "ft": {"epochs": 1},
    "fp": {"epochs": 1},
    "fmp": {"epochs": 1, "adv_images": 2, "group": 512},
    "anp": {"iterations": 3},
    "awm": {"epochs": 1},
    "nft": {"epochs": 1},
    "rnp": {"unlearn_epochs": 1, "recovery_epochs": 1},
    "mm-bd": {"epochs": 2, "adapt_every": 1},
    "unit": {"epochs": 2, "adapt_every": 1},
    "npd": {"epochs": 1, "warm_epochs": 1},
    "nc": {"epochs": 2, "unlearn_epochs": 1, "anomaly_threshold": 0.01, "class_chunk": 4},
    "bti-dbf": {
        "rounds": 1,
        "pretrain_epochs": 1,
        "mask_epochs": 1,
        "generator_epochs": 1,
        "unlearn_epochs": 1,
        "base_filters": 4,
    },
    "fst": {"epochs": 1},
    "ft-sam": {"epochs": 1},
    "nad": {"epochs": 1, "teacher_epochs": 1},
    "pbe": {"epochs": 1, "iterations": 2},
    "i-bau": {"rounds": 1, "K": 2},
    "sau": {"rounds": 1, "adv_steps": 2},
    "mesa": {"target": 0, "steps": 2, "levels": "0.9", "epochs": 1},
    "baeraser": {"target": 0, "steps": 2, "epochs": 1},
    "bcu": {"ood_dataset": "synthetic", "epochs": 1},
}
ARCHS = {"preact-resnet18": 1, "vgg19": 1, "efficientnet-b3": 3, "mobilenetv3-large": 3, "vit": 1}


@pytest.fixture(scope="module")
def clean_sets():
    return {c: mitigation_set(make_synthetic("train", n_train=200, size=28, channels=c), 2, 0) for c in (1, 3)}


def defend(name, arch, clean):
    torch.manual_seed(0)
    model = create_model(arch, 10, clean.channels, 28, 0.125)
    ctx = Context(seed=0)
    create_defense(name).check_model(model, arch)
    unlabeled = (
        as_unlabeled(make_synthetic("train", n_train=64, channels=3, seed=3), clean, 64) if name == "bcu" else None
    )
    out = create_defense(name, SHORT.get(name, {}))(copy.deepcopy(model), MitigationData(clean, unlabeled), ctx)
    x = torch.linspace(-1, 1, 2 * clean.channels * 28 * 28).view(2, clean.channels, 28, 28)
    with torch.no_grad():
        return out.eval()(x), ctx.record


def test_every_defense_has_short_settings():
    assert set(SHORT) >= set(DEFENSES) - {"bnp", "clp"}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_runs_on_architecture_deterministically(name, arch, clean_sets):
    clean = clean_sets[ARCHS[arch]]
    if create_defense(name).refusal(MODELS[canonical_model(arch)].facts, arch):
        pytest.skip(f"{name} refuses {arch} (test_refusals_name_the_layer_type)")
    first, record = defend(name, arch, clean)
    again, record_again = defend(name, arch, clean)
    assert first.shape == (2, 10) and torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert record == record_again and record


# what the ViT lacks, per defense that needs it; every other defense must run on it
REFUSE_VIT = {
    "bnp": "BatchNorm",
    "clp": "BatchNorm",
    "anp": "convolutions",
    "awm": "convolutions",
    "nft": "convolutions",
    "rnp": "convolutions",
    "npd": "convolutions",
    "fmp": "convolutions",
}


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_refusals_name_the_layer_type(name, clean_sets):
    vit = create_model("vit", 10, 1, 28, 0.125)
    defense = create_defense(name)
    line = defense.refusal(MODELS["vit"].facts, "vit")
    assert (line is not None) == (name in REFUSE_VIT)
    for arch in ARCHS:  # the CNNs have every layer type a defense asks for
        assert arch == "vit" or defense.refusal(MODELS[canonical_model(arch)].facts, arch) is None
    if line:
        assert "\n" not in line and REFUSE_VIT[name] in line and line.startswith(name)
        with pytest.raises(BdError, match="has none"):
            defense.check_model(vit, "vit")
        combined = create_defense(f"ft+{name}")
        assert combined.refusal(MODELS["vit"].facts, "vit") == line
