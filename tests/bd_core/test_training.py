"""The shared trainer and attack training: determinism, poisoning rules, a backdoor that works."""

from __future__ import annotations

import pytest
import torch
from bd_core.attacked import AttackSpec, load_data, obtain_attacked_model, train_attacked_model, weights_digest
from bd_core.attacks import BadNets, create_attack
from bd_core.data import make_synthetic
from bd_core.errors import BdError, InvalidRequest
from bd_core.train import PRESETS, Recipe, fit


def test_badnets_sets_exactly_the_patch_pixels():
    train = make_synthetic("train", n_train=20, size=32)
    trig = BadNets().fit(train, seed=0)
    mean, std = torch.zeros(3), torch.ones(3)
    x = trig.apply(train.images, torch.ones(20, dtype=torch.bool), mean, std) * 255
    assert torch.allclose(x[:, :, -3:, -3:], torch.full((20, 3, 3, 3), 255.0))
    torch.testing.assert_close(x[:, :, :29, :], train.images[:, :, :29, :].float(), atol=1e-3, rtol=0)
    assert BadNets().patch_side(64) == 6 and BadNets().patch_side(28) == 3


def test_poison_index_draws_the_ratio_from_non_target_rows(synthetic_data):
    flags = BadNets().poison_index(synthetic_data.train, 0.1, target=0, generator=torch.Generator().manual_seed(0))
    assert int(flags.sum()) == 200 and not (synthetic_data.train.labels[flags] == 0).any()
    with pytest.raises(InvalidRequest, match="poison ratio"):
        BadNets().poison_index(synthetic_data.train, 1.5, 0, torch.Generator())


def test_unknown_attack_setting_lists_valid_ones():
    with pytest.raises(BdError, match="valid: patch=3, value=255"):
        create_attack("badnets", {"size": "4"})


def test_same_seed_same_model(synthetic_data, monkeypatch):
    monkeypatch.setitem(PRESETS, "one-epoch", Recipe(epochs=1, batch_size=64, lr=0.05, width=0.125, train_limit=500))
    spec = AttackSpec("synthetic", "preact-resnet18", "badnets", 0.1, preset="one-epoch")
    a, _, ra = train_attacked_model(spec, synthetic_data)
    b, _, rb = train_attacked_model(spec, synthetic_data)
    assert ra["train_images"] == 500
    assert ra["epoch_losses"] == rb["epoch_losses"]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    # the digest stored with every result names the trained instance: equal weights, equal digest;
    # one changed value (or a changed buffer) gives another
    assert weights_digest(a) == weights_digest(b) and len(weights_digest(a)) == 16
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)


@pytest.mark.learned
def test_backdoor_is_learned_and_cached(backdoored, synthetic_data, tiny_preset):
    spec, first, hit, cache = backdoored
    assert not hit
    m = first.meta["metrics"]
    assert m["acc"] > 0.9 and m["asr"] > 0.9 and m["ra"] < 0.2
    again, hit = obtain_attacked_model(spec, synthetic_data, cache)
    assert hit and again.meta["metrics"] == m
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(again.model(x), first.model.eval()(x))
    other = AttackSpec("synthetic", "preact-resnet18", "badnets", 0.05, preset=tiny_preset)
    assert other.key != spec.key


COSINE_LR_SUM = 1 + 0.5 * (1 + 0.5**0.5) + 0.5 + 0.5 * (1 - 0.5**0.5)  # lr of 4 cosine-annealed epochs


@pytest.mark.parametrize("schedule, total_lr", [("constant", 4.0), ("cosine", COSINE_LR_SUM)])
def test_fit_schedules_the_learning_rate_per_epoch(schedule, total_lr):
    """A loss whose gradient is 1 moves the weight by the sum of the epochs' learning rates:
    constant (NAD's student) or cosine-annealed over the run (every other fine-tuning)."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    fit(
        model,
        lambda idx, g: (torch.zeros(len(idx), 1), torch.zeros(len(idx))),
        1,
        epochs=4,
        batch_size=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        step=lambda m, x, y: m.weight.sum(),
        schedule=schedule,
    )
    assert model.weight.item() == pytest.approx(-total_lr)


def test_fit_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="schedule"):
        fit(
            torch.nn.Linear(1, 1),
            lambda idx, g: (torch.zeros(1, 1), torch.zeros(1)),
            1,
            epochs=1,
            batch_size=1,
            lr=0.1,
            schedule="step",
        )


def test_architectures_change_the_recipe_only_where_they_must():
    """The ViT trains with AdamW (and, under quick, longer at a higher rate); the CNNs keep the
    preset's SGD recipe, and their stored recipe has no optimizer field, so keys made before
    the field existed still hold."""
    vit = AttackSpec("synthetic", "vit", "badnets", 0.1, preset="quick").recipe
    cnn = AttackSpec("synthetic", "preact-resnet18", "badnets", 0.1, preset="quick").recipe
    assert cnn == PRESETS["quick"] and "optimizer" not in cnn.config()
    assert vit.optimizer == "adamw" and vit.config()["optimizer"] == "adamw" and vit.width == cnn.width
    assert AttackSpec("synthetic", "vit", "badnets", 0.1, preset="paper").recipe.epochs == PRESETS["paper"].epochs
    assert AttackSpec("synthetic", "vit", "wanet", 0.1, preset="quick").recipe.epochs == 15  # the attack's own last
    with pytest.raises(InvalidRequest, match="optimizer"):
        Recipe(epochs=1, batch_size=1, lr=0.1, optimizer="lion")


def test_fit_with_adamw_decouples_weight_decay():
    """AdamW's first step moves every weight by lr (sign of the gradient) plus lr * wd * w."""
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    fit(
        model,
        lambda idx, g: (torch.ones(len(idx), 2), torch.zeros(len(idx))),
        1,
        epochs=1,
        batch_size=1,
        lr=0.1,
        weight_decay=0.5,
        step=lambda m, x, y: m(x).sum(),
        schedule="constant",
        optimizer="adamw",
    )
    torch.testing.assert_close(model.weight, torch.tensor([[1.0 - 0.1 * 0.5 - 0.1, -1.0 + 0.1 * 0.5 - 0.1]]))


def test_fit_in_channels_last_trains_the_same_weights_and_hands_back_the_default_layout():
    """Attack training runs in channels_last (faster CPU convolutions): the same steps as in the
    default layout up to rounding, the same Parameter objects, and the model handed back in the
    default layout that the defenses expect. In float64: in float32 the rounding of either
    layout is amplified by training to ~2 % of the update, as much as a change of thread count."""
    from bd_core.models import create_model

    data = torch.Generator().manual_seed(0)
    images = torch.randn(16, 1, 28, 28, generator=data, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,), generator=data)

    def make_batch(idx, g):
        assert images[idx].is_contiguous()  # fit itself converts what the batch maker gives
        return images[idx], labels[idx]

    models = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = create_model("preact-resnet18", 10, 1, 28, width=0.25).double()
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        params = list(model.parameters())
        fit(model, make_batch, 16, epochs=2, batch_size=8, lr=0.05, channels_last=channels_last)
        assert [id(p) for p in model.parameters()] == [id(p) for p in params]
        assert all(p.is_contiguous() for p in model.parameters())
        models.append(model)
    plain, nhwc = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models)
    assert (nhwc - plain).norm() < 1e-9 * (plain - start).norm()  # the same four steps


def test_fit_in_bf16_autocasts_the_convolutions_and_keeps_the_fp32_direction():
    """precision="bf16": convolutions run in bfloat16 (checked on the layer's output), the
    parameters stay float32 and in the default layout, and the update goes where the fp32 one
    does (bf16 keeps ~3 significant digits: the same step up to that rounding)."""
    from bd_core.models import create_model

    data = torch.Generator().manual_seed(0)
    images = torch.randn(16, 1, 28, 28, generator=data)
    labels = torch.randint(0, 10, (16,), generator=data)
    updates, seen = [], []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model("preact-resnet18", 10, 1, 28, width=0.25)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, args, out, p=precision: seen.append((p, out.dtype)))
        fit(
            model, lambda idx, g: (images[idx], labels[idx]), 16, epochs=1, batch_size=16, lr=0.05, precision=precision
        )  # one step: its update is the gradient (training amplifies rounding)
        hook.remove()
        assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]) - start)
    assert {dtype for p, dtype in seen if p == "fp32"} == {torch.float32}
    assert {dtype for p, dtype in seen if p == "bf16"} == {torch.bfloat16}
    # 0.98 measured (AMX and AVX2 alike); an unrelated direction would be near 0
    assert torch.nn.functional.cosine_similarity(updates[0], updates[1], dim=0) > 0.9
    with pytest.raises(InvalidRequest, match="precision must be one of fp32, bf16"):
        fit(model, lambda idx, g: (images[idx], labels[idx]), 16, epochs=1, batch_size=8, lr=0.05, precision="fp16")


@pytest.mark.learned
@pytest.mark.parametrize("attack", ["blended"])
def test_attacks_take_on_the_synthetic_data_at_the_quick_preset(attack):
    """What `bd attack --dataset synthetic` trains, in float32 as a user runs it: the backdoor must
    take on any CPU (`make test-isa`), or every synthetic grid measures nothing. Measured on an
    AVX-512 EPYC: Blended ASR 1.0, loss 0.001 by epoch 5. BadNets is not here yet: on this data it
    takes for seed 1 and not for seeds 0 and 2 (docs/decisions.md). The model lands in the
    session's cache, where the CLI tests find it."""
    from bd_core.paths import cache_root
    from bd_core.store import ModelCache

    attacked, _ = obtain_attacked_model(
        AttackSpec("synthetic", "preact-resnet18", attack), load_data("synthetic"), ModelCache(cache_root() / "models")
    )
    assert attacked.meta["metrics"]["asr"] >= 0.9 and attacked.meta["metrics"]["acc"] >= 0.9
