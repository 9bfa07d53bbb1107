"""The masked convolution's three paths agree, and the masking defenses' layers take the one
chosen for their device (the measured fastest, or $BD_MASKED_CONV)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from bd_defenses.masking import MaskedConv2d
from bd_kernels import has_extension, masked_conv2d, masked_conv_path, reference
from test_ops import conv_case

PATHS = ("epilogue", "reference", "folded")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 0, 2)])
def test_every_path_matches_the_reference_in_values_and_gradients(path, stride, padding, groups):
    args = conv_case("cpu", torch.float64, groups=groups)
    y = masked_conv2d(*args, stride, padding, 1, groups, path=path)
    ref_args = [a.detach().clone().requires_grad_() for a in args]
    y_ref = reference.masked_conv2d(*ref_args, stride, padding, 1, groups)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y_ref)
    for name, g, r in zip(
        "x w b m d mb db".split(),
        torch.autograd.grad(y, args, gy),
        torch.autograd.grad(y_ref, ref_args, gy),
        strict=True,
    ):
        torch.testing.assert_close(g, r, msg=name)


def test_the_path_is_the_measured_fastest_unless_overridden(monkeypatch):
    monkeypatch.delenv("BD_MASKED_CONV", raising=False)
    assert masked_conv_path("cpu") == "epilogue" and masked_conv_path("cuda") == "reference"
    assert masked_conv_path("mps") == "reference"  # unmeasured devices: plain eager ops
    monkeypatch.setenv("BD_MASKED_CONV", "folded")
    assert masked_conv_path("cpu") == "folded"
    monkeypatch.setenv("BD_MASKED_CONV", "fused")
    with pytest.raises(ValueError, match="BD_MASKED_CONV='fused': choose one of epilogue, reference, folded"):
        masked_conv_path("cpu")
    with pytest.raises(ValueError, match="path 'fast'"):
        masked_conv2d(*conv_case("cpu", torch.float32), 1, 1, path="fast")


def _ops_run(layer: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x).sum().backward()
    return {event.key for event in prof.key_averages()}


@pytest.mark.skipif(not has_extension(), reason="the epilogue path needs the compiled extension")
def test_a_masking_defenses_layer_takes_the_chosen_path(monkeypatch):
    layer = MaskedConv2d(nn.Conv2d(4, 6, 3, padding=1))
    x = torch.randn(2, 4, 8, 8)
    monkeypatch.delenv("BD_MASKED_CONV", raising=False)
    assert "bd_kernels::masked_conv2d_epilogue" in _ops_run(layer, x)  # the CPU's fastest
    for path in ("reference", "folded"):
        monkeypatch.setenv("BD_MASKED_CONV", path)
        ops = _ops_run(layer, x)
        assert "bd_kernels::masked_conv2d_epilogue" not in ops
        assert ("aten::mul" in ops) and (path != "folded" or "aten::convolution" in ops)
