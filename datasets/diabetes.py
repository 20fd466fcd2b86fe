"""scikit-learn's bundled diabetes data: a real regression set, no download (442 patients)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from datasets import register
from datasets.tensor_dict import TensorDictDataset, split_indices

SPLITS = ('train', 'val', 'test')


@register('diabetes')
class Diabetes(TensorDictDataset):
    """`{'features': float (10,), 'target': float (1,)}`: age, sex, body mass index, blood pressure
    and six blood serum measurements, and a measure of disease progression one year later.

    Features are standardized with the training split's mean and standard deviation. The target
    is kept as (1,), the shape of a one-output model's prediction, so losses and metrics such as
    torchmetrics' R2Score compare like with like; the losses and the base wrapper find it under
    their `target_key` (`target` here, `label` for classification).

    Args:
        split: 'train', 'val' or 'test' (a fixed, seeded split).
        val_fraction, test_fraction: shares of the 442 patients held out (train keeps the rest).
        split_seed: seed of the split, independent of the training seed.
        standardize_target: scale the target with the training split's mean and standard
            deviation (easier to fit; R2 is the same either way, MSE and MAE are then in standard
            deviations). Off: the original units (25 to 346).
    """

    def __init__(self, split: str = 'train', val_fraction: float = 0.15, test_fraction: float = 0.15,
                 split_seed: int = 0, standardize_target: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        features, target = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes_arrays())
        parts = split_indices(len(target), {'val': val_fraction, 'test': test_fraction}, split_seed)
        train = features[parts['train']]
        features = (features - train.mean(0)) / train.std(0)
        if standardize_target:
            train_target = target[parts['train']]
            target = (target - train_target.mean()) / train_target.std()
        index = parts[split]
        super().__init__({'features': features[index], 'target': target[index].unsqueeze(1)})


def load_diabetes_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(features (442, 10), target (442,)) in original units: `load_diabetes(scaled=False)`, read
    straight from the files scikit-learn ships (importing `sklearn.datasets` costs 0.8 s)."""
    spec = importlib.util.find_spec('sklearn')   # finds the package without importing it
    if spec and spec.origin:
        folder = Path(spec.origin).parent / 'datasets' / 'data'
        if (folder / 'diabetes_data_raw.csv.gz').is_file() and (folder / 'diabetes_target.csv.gz').is_file():
            return np.loadtxt(folder / 'diabetes_data_raw.csv.gz'), np.loadtxt(folder / 'diabetes_target.csv.gz')
    from sklearn.datasets import load_diabetes  # another scikit-learn layout: its own loader
    data = load_diabetes(scaled=False)
    return data.data, data.target
