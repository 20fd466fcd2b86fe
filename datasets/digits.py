"""scikit-learn's bundled 8x8 handwritten digits: real data, no download (1797 images)."""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datasets import register
from datasets.tensor_dict import TensorDictDataset, split_indices
from utils import TransformSpec

SPLITS = ('train', 'val', 'test')


@register('digits')
class Digits(TensorDictDataset):
    """`{'image': float (1, 8, 8) in [0, 1], 'label': long}`; a fixed, seeded train/val/test split.

    Args:
        split: 'train', 'val' or 'test'.
        val_fraction, test_fraction: shares of the 1797 images held out (train keeps the rest).
        split_seed: seed of the split, independent of the training seed.
        transforms: batch augmentation (`torchvision.transforms.v2` specs, see TensorDictDataset).
    """

    def __init__(self, split: str = 'train', val_fraction: float = 0.15, test_fraction: float = 0.15,
                 split_seed: int = 0, transforms: Optional[Sequence[TransformSpec]] = None) -> None:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        pixels, targets = load_digits_arrays()
        images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        labels = torch.tensor(targets, dtype=torch.long)
        index = split_indices(len(labels), {'val': val_fraction, 'test': test_fraction}, split_seed)[split]
        super().__init__({'image': images[index], 'label': labels[index]}, transforms)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64), labels (1797,)): what `sklearn.datasets.load_digits` returns, read
    straight from the file scikit-learn ships. Importing `sklearn.datasets` takes about 0.8 s of
    a run's start-up; reading the file takes 5 ms."""
    spec = importlib.util.find_spec('sklearn')   # finds the package without importing it
    if spec and spec.origin:
        path = Path(spec.origin).parent / 'datasets' / 'data' / 'digits.csv.gz'
        if path.is_file():
            table = np.loadtxt(path, delimiter=',')
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # another scikit-learn layout: its own loader
    digits = load_digits()
    return digits.data, digits.target
