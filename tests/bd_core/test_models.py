"""Every architecture on 1- and 3-channel inputs from 28 to 64 px: the model contract and its anatomy."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from bd_core.errors import BdError
from bd_core.models import MODELS, anatomy, as_feature_map, canonical_model, create_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 64)])
def test_forward_and_anatomy(name, channels, size):
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size, width=0.125).eval()
    x = torch.randn(2, channels, size, size)
    assert model(x).shape == (2, 7)
    a = anatomy(model, channels, size)
    assert a.convs[0][1].in_channels == channels
    # the model contract: the forward pass is the head applied to the feature map
    feature_map = model.forward_features(x)
    assert feature_map.dim() == 4 and feature_map.shape[0] == 2
    torch.testing.assert_close(model.forward_head(feature_map), model(x))
    # ... and that map is what global pooling receives, made by the last conv's channels
    seen = {}
    hooks = [a.pool[1].register_forward_pre_hook(lambda m, i: seen.setdefault("pool_in", i[0]))]
    if a.last_conv is not None:
        hooks.append(a.last_conv[1].register_forward_hook(lambda m, i, o: seen.setdefault("last_conv", o)))
    hooks += [s.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o)) for n, s in a.stages]
    model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen["pool_in"], feature_map)
    assert all(n in seen for n, _ in a.stages), "every stage runs in the forward pass"
    assert a.activations and all(isinstance(m, nn.BatchNorm2d) == relu_first for _, m, relu_first in a.activations)
    assert len(a.stages) >= 3
    if "conv" not in model.facts.layer_types:  # the ViT: tokens on the 4x4 patch grid, no conv trunk, no BN
        assert a.last_conv is None and a.polarizer_before is None and not a.conv_bn
        assert feature_map.shape[2:] == (size // 4, size // 4)
        tokens = seen[a.stages[-1][0]]
        assert tokens.shape == (2, (size // 4) ** 2, feature_map.shape[1])
        torch.testing.assert_close(as_feature_map(tokens).flatten(2), tokens.transpose(1, 2))
        return
    assert isinstance(a.last_conv[1], nn.Conv2d)
    assert a.last_conv[1].out_channels == feature_map.shape[1]
    assert isinstance(a.polarizer_before[1], nn.Conv2d)
    for _, conv, _, bn in a.conv_bn:
        assert conv.out_channels == bn.num_features
    assert len(a.conv_bn) >= 5


def test_preact_conv_bn_pairs_are_direct_only():
    a = anatomy(create_model("preact-resnet18", 10, 3, 32, width=0.125))
    pairs = {(c, b) for c, _, b, _ in a.conv_bn}
    assert ("layer1.0.conv1", "layer1.0.bn2") in pairs
    # conv2's output is summed with the shortcut before the next BN: not a direct pair
    assert not any(c.endswith("conv2") for c, _ in pairs)


@pytest.mark.parametrize(
    "typed, canonical",
    [
        ("vgg19", "vgg19-bn"),
        ("VGG19-BN", "vgg19-bn"),
        ("preact_resnet18", "preact-resnet18"),
        ("MobileNetV3-Large", "mobilenetv3-large"),
        ("ViT-Tiny", "vit"),
    ],
)
def test_names_users_type(typed, canonical):
    assert canonical_model(typed) == canonical


def test_bad_requests():
    with pytest.raises(BdError, match="valid: preact-resnet18"):
        create_model("resnet50", 10)
    with pytest.raises(BdError, match="28..64"):
        create_model("vgg19", 10, 3, 96)
    with pytest.raises(BdError, match="1 or 3"):
        create_model("vgg19", 10, 4, 32)
    with pytest.raises(BdError, match="multiple of 4"):
        create_model("vit", 10, 3, 30)
