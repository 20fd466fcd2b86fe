"""The generic data module: loaders for train/val/test/predict from dataset specs."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from utils import DATA_MODULES, DATASETS, Spec

STAGES = ('train', 'val', 'test', 'predict')


@DATA_MODULES.register('default')
class DataModule:
    """Builds each split's dataset from its spec on first use, and a DataLoader around it.

    Args:
        train, val, test, predict: dataset specs `{name, args}`; leave out what you don't use.
        batch_size: per process (with DDP each process loads this many samples per step).
        eval_batch_size: for val/test/predict; defaults to `batch_size`.
        num_workers: loader worker processes; `persistent_workers` is on whenever there are any.
        pin_memory: defaults to on when CUDA is available.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(self, train: Optional[Spec['datasets']] = None, val: Optional[Spec['datasets']] = None,
                 test: Optional[Spec['datasets']] = None, predict: Optional[Spec['datasets']] = None,
                 batch_size: int = 32, eval_batch_size: Optional[int] = None, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, drop_last: bool = False) -> None:
        self.specs = {'train': train, 'val': val, 'test': test, 'predict': predict}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last = drop_last
        self._datasets: dict[str, Dataset] = {}

    def dataset(self, stage: str) -> Dataset:
        """The dataset of one split, built once."""
        if stage not in self._datasets:
            self._datasets[stage] = DATASETS.make(self.specs[stage])
        return self._datasets[stage]

    def loader(self, stage: str) -> Optional[DataLoader]:
        """A DataLoader over one split (shuffled for training); None if the split has no spec.

        In a distributed run each process loads its own part: training shuffles with a
        DistributedSampler (seeded from the run's seed, reshuffled by `set_epoch`), evaluation
        takes every world_size-th sample with no padding, so each sample is counted once.
        """
        if self.specs[stage] is None:
            return None
        train = stage == 'train'
        dataset = self.dataset(stage)
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = (DistributedSampler(dataset, shuffle=True, seed=torch.initial_seed(), drop_last=self.drop_last)
                       if train else ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size()))
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train and sampler is None, sampler=sampler, drop_last=train and self.drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> Optional[DataLoader]:
        return self.loader('train')

    def val_dataloader(self) -> Optional[DataLoader]:
        return self.loader('val')

    def test_dataloader(self) -> Optional[DataLoader]:
        return self.loader('test')

    def predict_dataloader(self) -> Optional[DataLoader]:
        return self.loader('predict')


class ShardSampler(Sampler):
    """Indices rank, rank + world_size, ...: every sample exactly once across processes."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
