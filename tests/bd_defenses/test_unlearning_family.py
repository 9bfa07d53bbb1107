"""Mechanism tests of the synthesis, fine-tuning and adversarial defenses on the planted
backdoor (tests/bd_defenses/planted.py) and on small models."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from bd_core.data import make_synthetic, mitigation_set
from bd_core.data.imageset import as_unlabeled
from bd_core.data.pixels import Pixels
from bd_core.metrics import evaluate
from bd_core.models import create_model
from bd_defenses import Context, MitigationData, create_defense, describe
from bd_defenses.fst import head_layers
from bd_defenses.ftsam import adaptive_perturbation, smoothed_cross_entropy
from bd_defenses.nc import ReversedTriggers, anomaly_indices
from planted import TARGET, planted_world, success_rates

pytestmark = pytest.mark.learned  # asserts on training outcomes: see docs/decisions.md


@pytest.fixture(scope="module")
def world():
    return planted_world()


def run(name, model, clean, **settings):
    ctx = Context(seed=0)
    torch.manual_seed(0)
    out = create_defense(name, settings)(copy.deepcopy(model), MitigationData(clean), ctx)
    return out, ctx.record


def test_anomaly_index_is_the_mad_score():
    norms = torch.tensor([10.0, 11.0, 9.0, 10.5, 2.0])
    mad = 1.4826 * torch.tensor([0.0, 1.0, 1.0, 0.5, 8.0]).median()
    torch.testing.assert_close(anomaly_indices(norms), (norms - 10.0).abs() / mad)


def test_nc_stamps_a_batch_with_one_trigger_per_image_as_image_by_image():
    g = torch.Generator().manual_seed(0)
    triggers = ReversedTriggers(torch.rand(4, 1, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g), torch.ones(4))
    x, pick = torch.rand(6, 3, 8, 8, generator=g), torch.tensor([2, 0, 3, 2, 1, 1])
    one_by_one = torch.stack([triggers.stamp(xi, int(k)) for xi, k in zip(x, pick, strict=True)])
    assert torch.equal(triggers.stamp(x, pick), one_by_one)  # the same arithmetic, bit for bit
    assert torch.equal(triggers.stamp(x[1], 0), one_by_one[1])


def test_fst_head_keeps_the_original_norm_and_turns_away(world):
    _, _, model, clean = world
    before = head_layers(model)[0].weight.detach().clone()
    out, record = run("fst", model, clean, epochs=3)
    after = head_layers(out)[0].weight.detach()
    assert after.norm().item() == pytest.approx(before.norm().item(), rel=1e-5)
    assert record["head_norm_ratio"] == [pytest.approx(1.0, abs=1e-5)]
    assert record["head_cosine_to_original"][0] < 0.5


def test_ftsam_perturbation_has_the_configured_adaptive_radius():
    model = create_model("preact-resnet18", 10, 1, 28, 0.125)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    params = [p for p in model.parameters()]
    e = adaptive_perturbation(params, rho=2.0)
    radius = torch.norm(
        torch.stack([(ei / p.detach().abs().clamp_min(1e-12)).norm() for ei, p in zip(e, params, strict=True)])
    )
    assert radius.item() == pytest.approx(2.0, rel=1e-4)


def test_ftsam_smooths_labels_as_the_authors_code():
    # SAM's reference smooth_crossentropy, which FT-SAM's authors and the survey's code use:
    # target 1 - eps on the true class, eps / (K - 1) on the others (not torch's eps / K)
    g = torch.Generator().manual_seed(0)
    logits, labels, eps = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.arange(6), 0.1
    target = torch.full((6, 10), eps / 9, dtype=torch.float64)
    target[torch.arange(6), labels] = 1 - eps
    direct = (target * (target.log() - logits.log_softmax(1))).sum(1).mean()
    assert smoothed_cross_entropy(logits, labels, eps).item() == pytest.approx(direct.item(), rel=1e-12)
    torch_form = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps)
    gradient = torch.autograd.grad(smoothed_cross_entropy(logits.requires_grad_(), labels, eps), logits)[0]
    torch_gradient = torch.autograd.grad(
        torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps), logits
    )[0]
    assert not torch.allclose(gradient, torch_gradient)  # the two definitions do differ
    assert torch.allclose(gradient, (logits.softmax(1) - target) / 6)  # and this one's gradient is the authors'
    assert torch_form.item() != pytest.approx(direct.item())


@pytest.fixture(scope="module")
def trained(backdoored, synthetic_data):
    """A real BadNets model (conftest) with its test metrics before any defense."""
    _, attacked, _, _ = backdoored
    clean = mitigation_set(synthetic_data.train, 20, 0)
    pre = evaluate(attacked.model, synthetic_data.test, attacked.trigger, 0)
    assert pre.asr > 0.9
    return attacked, clean, pre, synthetic_data.test


def defended(trained, name, **settings):
    attacked, clean, pre, test = trained
    out, record = run(name, attacked.model, clean, **settings)
    return evaluate(out, test, attacked.trigger, 0), pre, record


def test_ftsam_keeps_its_adaptive_radius_while_repairing(trained):
    # lr 0.05: at the default 0.01, 20 epochs on this model leave ASR anywhere from 0.36 to 1.0
    # depending on the CPU's vector ISA (measured); at 0.05 it falls to ~0 on every path. What the
    # tiny model keeps of its accuracy depends on the ISA and the thread count (measured 0.70-1.0,
    # 0.70 with one thread on AVX-512): asserted is that it stays a classifier, 5x chance.
    post, pre, record = defended(trained, "ft-sam", epochs=20, lr=0.05)
    assert record["last_perturbation_radius"] == pytest.approx(2.0, rel=1e-3)
    assert post.acc > 5 / trained[3].num_classes and post.asr < 0.5 * pre.asr


def test_nad_attention_loss_falls(trained):
    post, pre, record = defended(trained, "nad", epochs=10, teacher_epochs=5)
    assert record["last_epoch_attention_loss"] < record["first_epoch_attention_loss"]
    assert post.acc > pre.acc - 0.1


def test_ibau_inner_maximisation_raises_the_loss(world):
    # on the planted model, whose clean loss is not ~0: on the trained BadNets model the clean loss
    # is ~1e-5 and a universal perturbation from zero has no gradient to climb (gain 0.0000 measured)
    out, record = run("i-bau", world.model, world.clean, rounds=2)
    assert all(gain > 0.01 for gain in record["inner_loss_gain_per_round"])  # 0.03-0.04 measured
    assert success_rates(out, world.test)[0] > success_rates(world.model, world.test)[0] - 0.1


def test_sau_adversarial_examples_raise_the_loss(trained):
    post, pre, record = defended(trained, "sau", rounds=5)
    assert record["final_adversarial_loss_gain"] > 0
    assert post.acc > pre.acc - 0.1


def test_pbe_trains_on_adversarial_examples(trained):
    post, pre, record = defended(trained, "pbe", epochs=5)
    assert record["final_adversarial_loss_gain"] > 0 and 0 <= record["final_adversarial_error"] <= 1
    assert post.acc > pre.acc - 0.1


def test_btidbf_generator_flips_the_models_decisions_within_its_bound(trained):
    # BTI-DBF's claim: a generator bounded in input space that moves images across the model's
    # decision boundary (flip rate 0.40, then 0.90 measured). Which class they flip to is the
    # model's: on this BadNets model it is class 8, not the target (measured; docs/decisions.md).
    post, pre, record = defended(
        trained,
        "bti-dbf",
        rounds=2,
        pretrain_epochs=5,
        mask_epochs=5,
        generator_epochs=10,
        unlearn_epochs=5,
        base_filters=8,
    )
    assert record["generated_flip_rate_per_round"][-1] > 0.7
    assert post.acc > pre.acc - 0.1


def test_nc_recovers_the_patch_flags_the_target_and_unlearns(backdoored, synthetic_data):
    """On a model backdoored by BadNets (a 3x3 white patch): NC's smallest mask is the target's, far
    below the others, and it is a small white blob: nine pixels hold most of its mass and are white
    in its pattern. Where the blob sits is the model's business (convolutions and global pooling
    answer to a white blob in several places), so it is not asserted; the MAD index flags class 0,
    and unlearning removes the backdoor."""
    _, attacked, _, _ = backdoored
    clean = mitigation_set(synthetic_data.train, 2, 0)  # 20 images: many steps per epoch in little time
    nc = create_defense("nc", {"epochs": "60", "batch_size": "20", "unlearn_epochs": "20"})
    triggers = nc.reverse_engineer(copy.deepcopy(attacked.model).eval(), Pixels.of(clean), 10, Context(seed=0))
    norms = triggers.masks.flatten(1).sum(1)
    assert int(norms.argmin()) == TARGET and norms[TARGET] < 0.2 * norms.median()
    mask, pattern = triggers.masks[TARGET, 0], triggers.patterns[TARGET, 0]
    top = mask.flatten().topk(9)
    assert top.values.sum() > 0.6 * mask.sum() and (pattern.flatten()[top.indices] > 0.9).float().mean() > 0.7
    # The MAD rule (tested exactly in test_anomaly_index_is_the_mad_score) is noisy on ten classes:
    # with the same smallest mask (a seventh of the median) the target's index measured 0.98 on
    # one CPU vector ISA and 3.05 on another, because the other classes' masks spread widely. So
    # the threshold 2 is not asserted: at 0.01 every class below the median is a suspect, the
    # target must have the largest index among them, and the flagged triggers must be unlearned.
    ctx = Context(seed=0)
    torch.manual_seed(0)
    nc = create_defense("nc", {"epochs": "60", "batch_size": "20", "unlearn_epochs": "20", "anomaly_threshold": "0.01"})
    out = nc(copy.deepcopy(attacked.model), MitigationData(clean), ctx)
    index, l1 = torch.tensor(ctx.record["anomaly_index"]), torch.tensor(ctx.record["mask_l1"])
    assert TARGET in ctx.record["flagged"] and int(torch.where(l1 < l1.median(), index, -1.0).argmax()) == TARGET
    post = evaluate(out, synthetic_data.test, attacked.trigger, 0)
    # several suspects share the 20 % of stamped images, so the target's trigger is unlearned
    # less than alone: ASR 0.0-0.37 measured across ISAs, from 1.0
    assert post.asr < 0.5


def test_reviewed_methods_ask_for_what_they_assume(trained):
    attacked, clean, _, _ = trained
    for name, needed in (("mesa", "target=N"), ("baeraser", "target=N"), ("bcu", "ood_dataset=NAME")):
        assert not describe(name)["benchmarked"] and needed in describe(name)["needs"]
        with pytest.raises(ValueError, match=re.escape(needed)):
            create_defense(name)(copy.deepcopy(attacked.model), MitigationData(clean), Context())


def test_mesa_learns_triggers_for_the_target_and_patches_the_model(trained):
    post, pre, record = defended(trained, "mesa", target=0, levels="0.9", steps=100, epochs=10)
    assert record["generator_success"][0] > 0.9  # its sampled patches do reach the target
    assert post.asr < 0.5 * pre.asr and post.acc > pre.acc - 0.25  # patching 200 images costs some accuracy


def test_bcu_distils_on_unlabeled_data_without_the_backdoor(trained):
    attacked, clean, pre, test = trained
    unlabeled = as_unlabeled(
        make_synthetic("train", n_train=600, size=32, channels=3, num_classes=7, seed=5), clean, 600
    )
    ctx = Context(seed=0)
    torch.manual_seed(0)
    out = create_defense("bcu", {"ood_dataset": "synthetic", "epochs": "10"})(
        copy.deepcopy(attacked.model), MitigationData(clean, unlabeled), ctx
    )
    post = evaluate(out, test, attacked.trigger, 0)
    # 10 epochs on this tiny model take ASR from 1.0 to 0.80 with one thread (AVX-512) and lower
    # with two: asserted is a clear fall, which a distillation that kept the backdoor would not show
    assert sum(ctx.record["reinitialised_per_layer"]) > 0 and post.asr < pre.asr - 0.15 and post.acc > 0.5


@pytest.mark.parametrize("classes", [43])  # 200 classes: same code, 83 s on this CPU (docs/defenses.md)
def test_nc_runs_on_many_classes_in_batched_chunks(classes):
    train = make_synthetic("train", num_classes=classes, n_train=2 * classes, size=28, channels=1)
    clean = mitigation_set(train, 1, 0)
    model = create_model("preact-resnet18", classes, 1, 28, 0.125)
    ctx = Context(seed=0)
    create_defense("nc", {"epochs": "1", "class_chunk": "50", "unlearn_epochs": "1"})(model, MitigationData(clean), ctx)
    assert len(ctx.record["mask_l1"]) == classes and len(ctx.record["anomaly_index"]) == classes
