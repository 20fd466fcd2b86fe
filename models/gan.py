"""A small generator and discriminator for GANs on small images (the `gan` wrapper trains them).

Contract with `models/wrappers/gan.py`: a generator has `latent_dim` and maps `{'z': (N, latent_dim)}`
to images in [0, 1]; a discriminator maps `{'image': (N, C, H, W)}` to one logit per image, (N,).
`example_batch(n)` gives the model tests the input each takes (the contract in models/__init__.py).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models import batch_input, register


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0,
         batch_norm: bool = False) -> nn.Sequential:
    """Linear(-BatchNorm)-LeakyReLU(-Dropout) blocks and a Linear head. LeakyReLU keeps gradients
    flowing where ReLU would go silent, the usual choice for GANs."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width)] + ([nn.BatchNorm1d(width)] if batch_norm else [])
        layers += [nn.LeakyReLU(0.2)] + ([nn.Dropout(dropout)] if dropout else [])
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


@register('gan_generator')
class MLPGenerator(nn.Module):
    """Noise `batch['z']` (N, latent_dim) -> images (N, *image_shape) in [0, 1] (a sigmoid).

    Args:
        latent_dim: size of the noise vector.
        hidden: sizes of the hidden layers.
        image_shape: (channels, height, width) of the images made, (1, 8, 8) for the digits.
        batch_norm: after each hidden layer. Without it this generator falls back on a few
            digits whatever the noise ("mode collapse"); with it, it draws all ten.
    """

    def __init__(self, latent_dim: int = 32, hidden: Sequence[int] = (128, 256),
                 image_shape: Sequence[int] = (1, 8, 8), batch_norm: bool = True) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.net = _mlp(latent_dim, hidden, math.prod(self.image_shape), batch_norm=batch_norm)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.net(batch['z'])).view(-1, *self.image_shape)

    def example_batch(self, n: int) -> dict[str, torch.Tensor]:
        """A batch this model takes, for tests."""
        return {'z': torch.randn(n, self.latent_dim)}


@register('gan_discriminator')
class MLPDiscriminator(nn.Module):
    """Images `batch[input_key]` -> one logit per image, (N,): > 0 means "real".

    Args:
        in_dim: size of the flattened image (64 for 8x8 digits).
        hidden: sizes of the hidden layers.
        dropout: after each hidden layer; it keeps the discriminator from memorising the
            training images, which would starve the generator of useful gradients.
    """

    def __init__(self, in_dim: int = 64, hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
                 input_key: str = 'image') -> None:
        super().__init__()
        self.in_dim, self.input_key = in_dim, input_key
        self.net = _mlp(in_dim, hidden, 1, dropout)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch_input(batch, self.input_key).flatten(1)).squeeze(1)

    def example_batch(self, n: int) -> dict[str, torch.Tensor]:
        """A batch this model takes, for tests."""
        return {self.input_key: torch.rand(n, self.in_dim)}
