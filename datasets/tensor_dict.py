"""A dataset held in memory as a dict of tensors that share their first dimension."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import Dataset


class TensorDictDataset(Dataset):
    """`dataset[i]` is `{key: tensor[i]}` for every key; subclasses fill `self.tensors`."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f'tensors must share their first dimension, got {lengths}')
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, torch.Tensor]:
    """A seeded permutation of range(n) cut into named parts; 'train' takes what is left."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for name, fraction in fractions.items():
        size = int(round(n * fraction))
        parts[name] = order[start:start + size]
        start += size
    parts['train'] = order[start:]
    return parts
