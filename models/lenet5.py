"""LeNet-5, sized for any image of 8x8 pixels or more."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models import batch_input, register


@register('lenet5')
class LeNet5(nn.Module):
    """Two conv-pool stages (padded, so 8x8 digits fit) and three linear layers."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_key: str = 'image') -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes))
        self.input_key = input_key

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.features(batch_input(batch, self.input_key)))
