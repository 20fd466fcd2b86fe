"""A multi-layer perceptron over a flattened input."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models import batch_input, register


@register('mlp')
class MLP(nn.Module):
    """Flatten `batch[input_key]`, then Linear-ReLU(-Dropout) blocks and a Linear head.

    Args:
        in_dim: size of the flattened input (64 for 8x8 digits, 784 for MNIST).
        hidden: sizes of the hidden layers.
        out_dim: number of outputs (classes).
    """

    def __init__(self, in_dim: int = 64, hidden: Sequence[int] = (256,), out_dim: int = 10,
                 dropout: float = 0.0, input_key: str = 'image') -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.input_key = input_key

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch_input(batch, self.input_key).flatten(1))
