"""A dataset held in memory as a dict of tensors that share their first dimension."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset


class TensorDictDataset(Dataset):
    """`dataset[i]` is `{key: tensor[i]}` for every key; subclasses fill `self.tensors`.

    `dataset[indices]` with a tensor of indices is a whole batch, `{key: tensor[indices]}`: the
    default data module serves batches that way, with one indexing operation per key instead of
    one `__getitem__` per sample and a collate. A subclass that overrides `__getitem__` (say, to
    augment each sample) is loaded sample by sample instead.

    `transforms` (specs of `torchvision.transforms.v2` classes) augment whole batches on the
    data's device as the default data module serves them (datasets/transforms.py: per-image flips
    and random crops, MixUp, CutMix, Normalize, ...); `dataset[i]` is never transformed.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], transforms: Optional[Sequence[Mapping]] = None) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f'tensors must share their first dimension, got {lengths}')
        self.tensors = dict(tensors)
        self.augment = None
        if transforms:
            from datasets.transforms import BatchAugment  # torchvision: only for datasets with transforms
            self.augment = BatchAugment(transforms)

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Transforms that cannot run batch by batch, before anything is built."""
        from datasets.transforms import check_batch_transforms  # torchvision: only for datasets with transforms
        return check_batch_transforms(args.get('transforms'))

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: Union[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return next(iter(self.tensors.values())).device

    def to(self, device: Union[str, torch.device]) -> TensorDictDataset:
        """Move every tensor to `device` (once, in place); returns the dataset."""
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self


def serves_batches(dataset: Dataset) -> bool:
    """Whether `dataset[indices]` is a whole batch: a TensorDictDataset with the plain `__getitem__`."""
    return isinstance(dataset, TensorDictDataset) and type(dataset).__getitem__ is TensorDictDataset.__getitem__


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
