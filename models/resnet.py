"""torchvision's ResNet-18, adapted to small images with few channels."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models import batch_input, register


@register('resnet18')
class ResNet18(nn.Module):
    """ResNet-18 (random init) with a 3x3 stride-1 stem and no max-pool, so 8x8 to 32x32 inputs
    keep enough resolution; `in_channels` defaults to 1 (grey images)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_key: str = 'image') -> None:
        super().__init__()
        from torchvision.models import resnet18  # torchvision only when this model is used
        self.net = resnet18(weights=None, num_classes=num_classes)
        self.net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()
        self.input_key = input_key

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch_input(batch, self.input_key))
