"""Every registered model and loss, tested the day it is registered (as timm does), through the
model contract in models/__init__.py: built from its defaults (or `example_args`), run on its
`example_batch(n)` (or a batch of 8x8 digits), one prediction row per sample, finite, and a
gradient for every trainable parameter."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from conftest import registering
from utils import LOSSES, MODELS


def digits_batch(n: int) -> dict[str, torch.Tensor]:
    """The batch a model without `example_batch` is taken to read: grey 8x8 digits, ten classes."""
    return {'image': torch.rand(n, 1, 8, 8), 'label': torch.arange(n) % 10}


def check_model(name: str) -> torch.Tensor:
    """The contract every registered model meets; returns its prediction on its example batch."""
    cls = MODELS.get(name)
    model = MODELS.make({'name': name, 'args': getattr(cls, 'example_args', {})})
    batch = model.example_batch(4) if hasattr(model, 'example_batch') else digits_batch(4)
    out = model(batch)
    assert isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == 4 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return out


# Every model registered in models/, and one of the torchvision namespace as a sample of it.
@pytest.mark.parametrize('name', MODELS.names(fallback=False) + ['torchvision.mobilenet_v3_small'])
def test_every_model_meets_the_contract(name: str) -> None:
    out = check_model(name)
    if not hasattr(MODELS.get(name), 'example_batch'):   # a digits classifier: ten logits it can be trained on
        assert out.shape == (4, 10)


# The bundled models (and the zoos' adapters) also take their input as a plain tensor, so that
# one can be the `net` of a LightningModule from elsewhere that calls `self.net(x)`.
BUNDLED = ['gan_discriminator', 'lenet5', 'mlp', 'resnet18', 'resnet9', 'torchvision.mobilenet_v3_small']


@pytest.mark.parametrize('name', BUNDLED)
def test_a_bundled_model_takes_a_plain_tensor_as_its_batch(name: str) -> None:
    cls = MODELS.get(name)
    model = MODELS.make({'name': name, 'args': getattr(cls, 'example_args', {})}).eval()
    batch = model.example_batch(4) if hasattr(model, 'example_batch') else digits_batch(4)
    key = getattr(model, 'input_key', None) or getattr(model, 'image_key', None)
    with torch.no_grad():
        assert torch.equal(model(batch[key]), model(batch))


class Regressor(nn.Module):
    """A user's regression model: tabular features in, one value per sample out."""

    def __init__(self, in_dim: int, input_key: str = 'features') -> None:
        super().__init__()
        self.fc, self.input_key = nn.Linear(in_dim, 1), input_key

    example_args = {'in_dim': 10}

    def example_batch(self, n: int) -> dict[str, torch.Tensor]:
        return {self.input_key: torch.randn(n, self.fc.in_features), 'target': torch.randn(n, 1)}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fc(batch[self.input_key])


class Segmenter(nn.Module):
    """A user's segmentation model: RGB images in, per-pixel class logits out (lazy first layer)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def example_batch(self, n: int) -> dict[str, torch.Tensor]:
        return {'image': torch.rand(n, 3, 16, 16), 'mask': torch.randint(0, 3, (n, 16, 16))}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch['image'])


@pytest.fixture
def user_models() -> Iterator[None]:
    with registering((MODELS, 'my_regressor', Regressor), (MODELS, 'my_segmenter', Segmenter)):
        yield


def test_regression_and_segmentation_models_meet_the_contract_without_editing_the_tests(user_models: None) -> None:
    assert check_model('my_regressor').shape == (4, 1)
    assert check_model('my_segmenter').shape == (4, 3, 16, 16)
    # The contract can fail: a prediction without one row per sample.
    with registering((MODELS, 'bad', type('Bad', (Regressor,), {'forward': lambda self, batch: self.fc.weight.sum()}))):
        with pytest.raises(AssertionError):
            check_model('bad')


def test_mse_returns_the_loss_and_a_logged_term() -> None:
    terms = LOSSES.make({'name': 'mse'})(torch.tensor([[1.0], [3.0]]), {'target': torch.tensor([0.0, 1.0])})
    assert terms['loss'].item() == pytest.approx(2.5)
    assert terms['mae'].item() == pytest.approx(1.5)


def test_digits_read_from_the_bundled_file_equal_scikit_learns_loader(monkeypatch) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    from datasets import digits
    expected = load_digits()
    pixels, labels = digits.load_digits_arrays()
    assert np.array_equal(pixels, expected.data) and np.array_equal(labels, expected.target)
    # Where scikit-learn keeps the file elsewhere, its own loader is used.
    monkeypatch.setattr(digits.importlib.util, 'find_spec', lambda name: None)
    pixels, labels = digits.load_digits_arrays()
    assert np.array_equal(pixels, expected.data) and np.array_equal(labels, expected.target)
    train = digits.Digits('train')
    assert train.tensors['image'].shape[1:] == (1, 8, 8) and float(train.tensors['image'].max()) == 1.0
