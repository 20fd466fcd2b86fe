"""scikit-learn's bundled 8x8 handwritten digits: real data, no download (1797 images)."""
from __future__ import annotations

import torch

from datasets import register
from datasets.tensor_dict import TensorDictDataset, split_indices

SPLITS = ('train', 'val', 'test')


@register('digits')
class Digits(TensorDictDataset):
    """`{'image': float (1, 8, 8) in [0, 1], 'label': long}`; a fixed, seeded train/val/test split.

    Args:
        split: 'train', 'val' or 'test'.
        val_fraction, test_fraction: shares of the 1797 images held out (train keeps the rest).
        split_seed: seed of the split, independent of the training seed.
    """

    def __init__(self, split: str = 'train', val_fraction: float = 0.15, test_fraction: float = 0.15,
                 split_seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        index = split_indices(len(labels), {'val': val_fraction, 'test': test_fraction}, split_seed)[split]
        super().__init__({'image': images[index], 'label': labels[index]})
