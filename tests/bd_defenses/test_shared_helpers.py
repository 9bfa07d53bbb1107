"""Shared defense helpers: the masked-model wrapper and activation statistics."""

from __future__ import annotations

import torch
from bd_core.data import make_synthetic
from bd_core.models import create_model
from bd_defenses.activations import layer_statistics
from bd_defenses.masking import MaskedConv2d, bake_masks, wrap_convolutions
from bd_kernels import apply_trigger


def test_wrapped_model_is_identical_until_masks_move():
    model = create_model("preact-resnet18", 10, 3, 32, 0.125).eval()
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    wrapped = wrap_convolutions(model)
    assert len(wrapped) == 20 and all(isinstance(m, MaskedConv2d) for m in wrapped.values())
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_zero_mask_removes_a_channel_and_bakes_into_weights():
    model = create_model("vgg19", 10, 1, 28, 0.125).eval()
    x = torch.randn(3, 1, 28, 28)
    wrapped = wrap_convolutions(model)
    first = next(iter(wrapped.values()))
    with torch.no_grad():
        first.mask[2] = 0.0
    masked_out = model(x)
    seen = {}
    handle = first.register_forward_hook(lambda m, i, o: seen.setdefault("y", o))
    model(x)
    handle.remove()
    # channel 2 lost its convolution: only its (unmasked) bias is left
    torch.testing.assert_close(seen["y"][:, 2], first.conv.bias[2].detach().expand_as(seen["y"][:, 2]))
    baked = bake_masks(model)
    assert not any(isinstance(m, MaskedConv2d) for m in baked.modules())
    torch.testing.assert_close(baked(x), masked_out, atol=1e-5, rtol=1e-5)


def test_mask_gradients_flow():
    model = create_model("mobilenetv3-large", 10, 3, 32, 0.25)
    wrapped = wrap_convolutions(model)
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    grads = [m.mask.grad for m in wrapped.values()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_layer_statistics_match_direct_computation():
    data = make_synthetic("train", n_train=50, size=28, channels=1)
    model = create_model("preact-resnet18", 10, 1, 28, 0.125).eval()
    layer = model.layer2
    stats = layer_statistics(model, layer, data, batch_size=16)
    feats = []
    h = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    mean, std = data.mean_std()
    with torch.no_grad():
        model(apply_trigger(data.images, mean=mean, std=std))
    h.remove()
    direct = feats[0].double()
    torch.testing.assert_close(stats.mean, direct.mean((0, 2, 3)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.var, direct.var((0, 2, 3), unbiased=False), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.max, direct.amax((0, 2, 3)))
    assert stats.batches == 4


def test_ftsam_second_pass_leaves_batchnorm_running_statistics_alone():
    """The pass at w + e normalises with its batch's statistics but must not move the running
    estimates, which the deployed (eval-mode) model uses."""
    from bd_defenses.ftsam import running_stats_frozen

    bn = torch.nn.BatchNorm2d(3).train()
    x = torch.randn(8, 3, 4, 4) * 3 + 2
    with running_stats_frozen(bn):
        out = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)  # batch statistics used
    bn(x)
    assert bn.momentum == 0.1 and not torch.equal(bn.running_mean, torch.zeros(3))


def test_settings_added_since_names_what_a_stored_result_lacks():
    """A stored result whose settings lack one the defense has now ran an earlier version of it."""
    import dataclasses

    from bd_defenses import create_defense, settings_added_since

    current = dataclasses.asdict(create_defense("npd"))
    assert settings_added_since("npd", current) == []
    older = {k: v for k, v in current.items() if k != "augment"}
    assert settings_added_since("npd", older) == ["augment"]
