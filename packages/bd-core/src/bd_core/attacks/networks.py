"""Small image-to-image networks that attacks train (SSBA's encoder and decoder,
InputAware's pattern and mask generators), and how their weights travel inside a
trigger: as `<prefix>.<state-dict key>` tensors next to the attacked model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bd_core.models.state import load_checked_state


def conv_block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU (InputAware's Conv2dBlock, StegaStamp's conv layers)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EncoderDecoder(nn.Module):
    """`depth` times (two conv blocks, 2x max-pool) down, a middle block, and back up with
    bilinear 2x upsampling and two conv blocks. With `skips` the features of each scale
    are concatenated on the way up (a U-Net, as StegaStamp's encoder); without them it is
    InputAware's generator. The last block is linear: callers squash its output."""

    def __init__(self, in_channels: int, out_channels: int, base: int, depth: int, skips: bool = False) -> None:
        super().__init__()
        if depth < 1 or base < 1:
            raise ValueError(f"EncoderDecoder needs depth >= 1 and base >= 1, got {depth}, {base}")
        self.depth, self.skips = depth, skips
        widths = [base * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(nn.Sequential(conv_block(cin, w), conv_block(w, w)))
            cin = w
        self.middle = conv_block(cin, cin)
        self.up = nn.ModuleList()
        for i, w in enumerate(reversed(widths)):
            last = i == depth - 1
            cout = out_channels if last else w // 2
            cin_up = cin + (w if skips else 0)
            self.up.append(nn.Sequential(conv_block(cin_up, cin_up), conv_block(cin_up, cout, relu=not last)))
            cin = cout

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(f"image side {tuple(x.shape[-2:])} must be divisible by {2**self.depth}")
        features = []
        for block in self.down:
            x = block(x)
            features.append(x)
            x = F.max_pool2d(x, 2)
        x = self.middle(x)
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            skip = features.pop()
            x = block(torch.cat([x, skip], 1) if self.skips else x)
        return x


def generator_shape(channels: int) -> tuple[int, int]:
    """(base width, depth) of InputAware's generators: 16/2 for grey MNIST-like data, 32/3 for colour."""
    return (16, 2) if channels == 1 else (32, 3)


def module_tensors(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def load_module_tensors(module: nn.Module, artifacts: dict[str, Tensor], prefix: str) -> nn.Module:
    """Load `<prefix>.*` tensors into `module`, refusing missing, extra or mis-shaped ones."""
    state = {k[len(prefix) + 1 :]: v for k, v in artifacts.items() if k.startswith(prefix + ".")}
    return load_checked_state(module, state, prefix).eval()


def frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
