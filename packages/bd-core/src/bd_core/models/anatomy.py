"""What defenses need to know about a model, found once: conv/BN pairs in forward order,
the points where activations act, the last conv layer, the pooling and classifier modules,
NPD's insertion point and the stage outputs NAD distils attention from. The named parts come
from the model's `facts` (bd_core.models.contract); conv/BN pairs are traced."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bd_core.models.contract import BdModel

# activation modules, where a model applies its nonlinearities as modules
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU)


@dataclass
class Anatomy:
    convs: list[tuple[str, nn.Conv2d]]  # every conv, in the order the forward pass runs them
    conv_bn: list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]  # BN that directly normalizes the conv's output
    last_conv: tuple[str, nn.Conv2d] | None  # the conv whose channels feed global pooling (None: ViT)
    pool: tuple[str, nn.Module]  # global pooling: input the feature map, output (flattened) the feature vector
    classifier: tuple[str, nn.Module]  # maps features to logits
    stages: list[tuple[str, nn.Module]]  # attention stages (NAD), shallow to deep
    polarizer_before: tuple[str, nn.Conv2d] | None  # where NPD inserts its polarizer (None: ViT)
    # where each ReLU (or other activation) acts: (name, module, relu_first). relu_first: the
    # module is a BatchNorm2d whose output the model passes through a functional ReLU.
    activations: list[tuple[str, nn.Module, bool]]


def anatomy(model: nn.Module, in_channels: int | None = None, image_size: int | None = None) -> Anatomy:
    """Resolve the model's anatomy; conv->BN pairs are found by tracing one forward pass (at
    `image_size`, by default the size the model is built for, else 32 px)."""
    if not isinstance(model, BdModel):
        raise TypeError(
            f"{type(model).__name__} is not a bd model (bd_core.models.contract.BdModel); "
            "create models with bd_core.models.create_model"
        )
    facts = model.facts
    modules = dict(model.named_modules())
    if in_channels is None:
        in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    convs, conv_bn = _trace(model, in_channels, image_size or model.input_size or 32)
    return Anatomy(
        convs=convs,
        conv_bn=conv_bn,
        last_conv=(facts.last_conv, modules[facts.last_conv]) if facts.last_conv else None,
        pool=(facts.pool, modules[facts.pool]),
        classifier=(facts.classifier, modules[facts.classifier]),
        stages=[(s, modules[s]) for s in facts.stages],
        polarizer_before=(facts.polarizer_before, modules[facts.polarizer_before]) if facts.polarizer_before else None,
        activations=activation_points(model),
    )


def activation_points(model: BdModel) -> list[tuple[str, nn.Module, bool]]:
    """Where the model's nonlinearities act, in registration order (no forward pass needed)."""
    if model.facts.relu_after_bn:
        return [(n, m, True) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return [(n, m, False) for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


def _trace(model: nn.Module, in_channels: int, image_size: int):
    """Run one eval-mode forward; a BN pairs with a conv when its input *is* the conv's
    output, unmodified (same tensor object, same version counter), and nothing else reads
    that output. The last condition is read from the autograd graph: in PreAct-ResNet the
    stem conv feeds the first block's BN *and* its identity shortcut, so folding that BN into
    the conv would change the residual stream."""
    order: list[tuple[str, nn.Conv2d]] = []
    produced: dict[int, tuple[str, nn.Conv2d, int, torch.Tensor]] = {}
    candidates: list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d, object]] = []
    hooks = []

    def on_conv(name):
        def hook(mod, inputs, output):
            order.append((name, mod))
            produced[id(output)] = (name, mod, output._version, output)

        return hook

    def on_bn(name):
        def hook(mod, inputs):
            x = inputs[0]
            hit = produced.get(id(x))
            if hit is not None and hit[3] is x and hit[2] == x._version:
                candidates.append((hit[0], hit[1], name, mod, x.grad_fn))

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(on_conv(name)))
        elif isinstance(mod, nn.BatchNorm2d):
            hooks.append(mod.register_forward_pre_hook(on_bn(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.enable_grad():
            x = torch.zeros(1, in_channels, image_size, image_size, device=device, requires_grad=True)
            readers = _readers(model(x))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    pairs = [(c, conv, b, bn) for c, conv, b, bn, node in candidates if node is not None and readers.get(node) == 1]
    return order, pairs


def _readers(output: torch.Tensor) -> dict[object, int]:
    """For every node of the autograd graph behind `output`, how many nodes read its result."""
    count: dict[object, int] = {}
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                count[child] = count.get(child, 0) + 1
                stack.append(child)
    return count
