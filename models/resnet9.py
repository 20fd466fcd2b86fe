"""ResNet-9: the small residual net of the fast CIFAR-10 trainings (DAWNBench, airbench's lineage)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models import batch_input, register


def conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    """3x3 convolution (no bias: batch norm follows), optional 2x2 max-pool, batch norm, GELU."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    layers += [nn.MaxPool2d(2)] if pool else []   # pooling before the norm: a quarter of its work
    return nn.Sequential(*layers, nn.BatchNorm2d(out_channels), nn.GELU())


class Residual(nn.Module):
    """x + f(x): two conv_bn layers of the same width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register('resnet9')
class ResNet9(nn.Module):
    """A stem, then three stages that halve the resolution (conv, pool), the first and last with a
    residual pair of convolutions; global max-pool and a linear head scaled down by `head_scale`
    (large logits at initialisation slow the first epochs).

    Args:
        in_channels: 3 for RGB (CIFAR-10), 1 for grey images (the default, as the other models).
        widths: channels of the stem and the three stages.
        num_classes: outputs.
        head_scale: multiplies the logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512),
                 head_scale: float = 0.125, input_key: str = 'image') -> None:
        super().__init__()
        stem, w1, w2, w3 = widths
        self.net = nn.Sequential(
            conv_bn(in_channels, stem),
            conv_bn(stem, w1, pool=True), Residual(w1),
            conv_bn(w1, w2, pool=True),
            conv_bn(w2, w3, pool=True), Residual(w3),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w3, num_classes, bias=False))
        self.head_scale, self.input_key = head_scale, input_key

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch_input(batch, self.input_key)) * self.head_scale
