"""Every registered model and loss, tested the day it is registered (as timm does)."""
from __future__ import annotations

import pytest
import torch

from utils import LOSSES, MODELS


# A model that is not a ten-class digit classifier says so with a class attribute `task` (e.g.
# 'gan') and brings an input of its own, `example_batch(n)`.
CLASSIFIERS = [n for n in MODELS.names() if getattr(MODELS.get(n), 'task', 'classification') == 'classification']
OTHERS = [n for n in MODELS.names() if n not in CLASSIFIERS]


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_every_model_maps_a_batch_of_digits_to_ten_logits(name: str) -> None:
    model = MODELS.make({'name': name})
    batch = {'image': torch.rand(4, 1, 8, 8), 'label': torch.tensor([0, 1, 2, 3])}
    logits = model(batch)
    assert logits.shape == (4, 10)
    loss = LOSSES.make({'name': 'ce'})(logits, batch)['loss']
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('name', OTHERS)
def test_every_other_model_runs_on_its_example_batch(name: str) -> None:
    model = MODELS.make({'name': name})
    out = model(model.example_batch(4))
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


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
