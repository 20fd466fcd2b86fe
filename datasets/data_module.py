"""The generic data module: loaders for train/val/test/predict from dataset specs (several named
validation sets allowed)."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, Optional, Union

import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from datasets.tensor_dict import TensorDictDataset, serves_batches
from utils import DATA_MODULES, DATASETS, DatasetSpec


@DATA_MODULES.register('default')
class DataModule:
    """Builds each split's dataset from its spec on first use, and a loader around it.

    Datasets held in memory (`TensorDictDataset`, e.g. digits, mnist) are served whole batches by
    index (`BatchLoader`); any other dataset goes through a standard DataLoader. Both give the same
    batches in the same order from the same random draws.

    Args:
        train, val, test, predict: dataset specs `{name, args}`; leave out what you don't use.
            `val` may also be several named specs, `{clean: SPEC, noisy: SPEC}`: each is
            evaluated and logged on its own (`val/clean/acc`, `val/noisy/loss`, ...).
        batch_size: per process (with DDP each process loads this many samples per step).
        eval_batch_size: for val/test/predict; defaults to `batch_size`.
        num_workers: DataLoader worker processes for datasets loaded sample by sample
            (`persistent_workers` is on whenever there are any); in-memory batches need none.
        pin_memory: page-locked batches for faster copies to the GPU; defaults to on when CUDA is
            available (never for data already on a device).
        drop_last: drop the last incomplete training batch.
        batch_by_index: serve in-memory datasets by index (off: per-sample DataLoader, same batches).
        device: move in-memory datasets to this device once (e.g. 'cuda'): batches are then indexed
            there and nothing is copied per step. Set it to the device you train on.
        num_classes: how many classes the data has. The data module does not use it: it is the
            one place model and metric arguments refer to (`${data_module.args.num_classes}`).
    """

    def __init__(self, train: Optional[DatasetSpec] = None,
                 val: Union[DatasetSpec, dict[str, DatasetSpec], None] = None,
                 test: Optional[DatasetSpec] = None, predict: Optional[DatasetSpec] = None,
                 batch_size: int = 32, eval_batch_size: Optional[int] = None, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, drop_last: bool = False, batch_by_index: bool = True,
                 device: Optional[str] = None, num_classes: Optional[int] = None) -> None:
        for name, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value}')
        if num_workers < 0:
            raise ValueError(f'num_workers must be 0 or more, got {num_workers}')
        self.specs: dict[str, Any] = {'train': train, 'val': val, 'test': test, 'predict': predict}
        # Several validation sets: their names, and a spec per stage 'val/<name>'.
        self.val_names: Optional[list[str]] = None
        if isinstance(val, dict) and 'name' not in val:
            bad = [n for n in val if not re.fullmatch(r'[A-Za-z0-9_\-]+', str(n))]
            if not val or bad:
                raise ValueError(f'val: named validation sets need names of letters, digits, _ and - '
                                 f'(got {bad or "none"})')
            self.val_names = [str(n) for n in val]
            self.specs.update({f'val/{n}': spec for n, spec in val.items()})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last = drop_last
        self.batch_by_index = batch_by_index
        self.device = device
        self.num_classes = num_classes
        self._datasets: dict[str, Dataset] = {}

    @property
    def classes(self) -> Optional[list[str]]:
        """The training set's class names, if it has them (`dataset.classes`, as torchvision's)."""
        return getattr(self.dataset('train'), 'classes', None) if self.specs['train'] else None

    def dataset(self, stage: str) -> Dataset:
        """The dataset of one split ('val/<name>' for a named validation set), built once (and
        moved to `device` if one is set)."""
        if stage not in self._datasets:
            dataset = DATASETS.make(self.specs[stage])
            if self.device is not None:
                if not (self.batch_by_index and serves_batches(dataset)):
                    raise ValueError(f"device: {self.device!r} needs in-memory datasets served by index "
                                     f"(TensorDictDataset, batch_by_index: true); the {stage} dataset "
                                     f"{self.specs[stage]['name']!r} is loaded sample by sample")
                dataset.to(self.device)
            self._datasets[stage] = dataset
        return self._datasets[stage]

    def sampler(self, stage: str) -> Sampler:
        """The order of one split's samples in this process.

        In a distributed run each process loads its own part: training shuffles with a
        DistributedSampler (seeded from the run's seed, reshuffled by `set_epoch`), evaluation
        takes every world_size-th sample with no padding, so each sample is counted once.
        """
        dataset, train = self.dataset(stage), stage == 'train'   # 'val/<name>' is evaluated like 'val'
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if train:
                return DistributedSampler(dataset, shuffle=True, seed=torch.initial_seed(), drop_last=self.drop_last)
            return ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size())
        # What DataLoader(shuffle=True) builds: the shuffle is drawn from the global torch RNG.
        return RandomSampler(dataset) if train else SequentialSampler(dataset)

    def loader(self, stage: str) -> Union[BatchLoader, DataLoader, list, None]:
        """The loader of one split (shuffled for training); None if the split has no spec. With
        several validation sets, 'val' gives a list of loaders in the order of `val_names`."""
        if self.specs[stage] is None:
            return None
        if stage == 'val' and self.val_names:
            return [self.loader(f'val/{name}') for name in self.val_names]
        dataset, sampler = self.dataset(stage), self.sampler(stage)
        batch_size = self.batch_size if stage == 'train' else self.eval_batch_size
        drop_last = stage == 'train' and self.drop_last
        if self.batch_by_index and serves_batches(dataset):
            return BatchLoader(dataset, sampler, batch_size, drop_last, pin_memory=self.pin_memory and not self.device)
        if getattr(dataset, 'augment', None) is not None:
            raise ValueError(f'the {stage} dataset {self.specs[stage]["name"]!r} is held in memory and transformed '
                             f'batch by batch: keep batch_by_index: true')
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> Union[BatchLoader, DataLoader, None]:
        return self.loader('train')

    def val_dataloader(self) -> Union[BatchLoader, DataLoader, list, None]:
        return self.loader('val')

    def test_dataloader(self) -> Union[BatchLoader, DataLoader, None]:
        return self.loader('test')

    def predict_dataloader(self) -> Union[BatchLoader, DataLoader, None]:
        return self.loader('predict')


class BatchLoader:
    """Batches of an in-memory dataset by index: `dataset[indices]`, one indexing operation per
    key, on the device the data is on (the way the fastest CIFAR-10 and MNIST scripts load data).

    It stands in for a DataLoader: `len()` is the number of batches, `sampler` the per-sample
    sampler (train.py and Lightning call its `set_epoch`), and the batches, their order and the
    draws from the global random generator are a DataLoader's, so switching it off changes no
    result.
    """
    batch_sampler = None   # a DataLoader attribute Lightning reads: the batching is done here

    def __init__(self, dataset: TensorDictDataset, sampler: Sampler, batch_size: int, drop_last: bool = False,
                 pin_memory: bool = False) -> None:
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.drop_last, self.pin_memory = drop_last, pin_memory

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The random draws of a DataLoader epoch, in its order: its workers' base seed, then the
        # sampler's shuffle. Without the first, dropout masks would differ from the per-sample
        # path's. (Both happen on the first batch: Lightning calls iter() once just to check.)
        torch.empty((), dtype=torch.int64).random_()
        # The epoch's order goes to the data's device in one copy; each batch indexes with a slice
        # of it, so there is no host sync per step.
        order = torch.tensor(list(self.sampler), dtype=torch.long).to(self.dataset.device)
        augment = getattr(self.dataset, 'augment', None)
        if augment is not None and augment.random:   # each process its own draws (all share the global seed)
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            augment.reseed(int(torch.empty((), dtype=torch.int64).random_()) + rank, self.dataset.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = self.dataset[order[start:start + self.batch_size]]
            if augment is not None:
                batch = augment(batch)
            yield {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch


class ShardSampler(Sampler):
    """Indices rank, rank + world_size, ...: every sample exactly once across processes."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
