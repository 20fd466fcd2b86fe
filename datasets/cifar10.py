"""CIFAR-10, rooted in `load/cifar10`, held in memory as tensors (batches served by index)."""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from datasets import register
from datasets.tensor_dict import TensorDictDataset, split_indices
from utils import PROJECT_ROOT, TransformSpec, display_path

FOLDER = 'cifar-10-batches-py'   # what torchvision's CIFAR10 and the official archive unpack to
TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
FILES = TRAIN_FILES + ('test_batch', 'batches.meta')
URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
MEAN = (0.4914, 0.4822, 0.4465)   # per channel, over the training images (for a Normalize transform)
STD = (0.2470, 0.2435, 0.2616)


@register('cifar10')
class CIFAR10(TensorDictDataset):
    """`{'image': float (3, 32, 32) in [0, 1], 'label': long}`, 50,000 training and 10,000 test images;
    `classes` are the names in batches.meta (airplane, automobile, ...).

    The files are read directly (the pickled batches of the official archive, with an unpickler
    that builds NumPy arrays and nothing else), so the whole split sits in one tensor and the
    default data module serves and augments batches by index, on the GPU with `device: cuda`.

    Args:
        root: folder holding `cifar-10-batches-py/` (relative paths are relative to the project).
        split: 'train', 'val' (a seeded hold-out of `val_size` training images) or 'test'.
        val_size: training images held out for 'val' (0: train on all 50,000).
        download: fetch the archive through torchvision when the files are missing.
        transforms: batch augmentation (`torchvision.transforms.v2` specs, see TensorDictDataset).
    """

    def __init__(self, root: str = 'load/cifar10', split: str = 'train', val_size: int = 0, split_seed: int = 0,
                 download: bool = False, transforms: Optional[Sequence[TransformSpec]] = None) -> None:
        if split not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        root_path = Path(root) if Path(root).is_absolute() else PROJECT_ROOT / root
        folder = root_path / FOLDER
        if download and any(not (folder / f).is_file() for f in FILES):
            from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10  # torchvision: only when the files are read
            TorchvisionCIFAR10(str(root_path), download=True)
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f'CIFAR-10 files missing in {display_path(folder)}: {", ".join(missing)}; unpack '
                              f'{URL} into {display_path(root_path)} (it holds {FOLDER}/ with {", ".join(FILES)}), '
                              f'or set download: true')
        batches = [read_batch(folder / f) for f in (TRAIN_FILES if split != 'test' else ('test_batch',))]
        pixels = np.concatenate([b['data'] for b in batches])
        images = torch.from_numpy(pixels).reshape(-1, 3, 32, 32).float().div_(255.0)
        labels = torch.tensor([label for b in batches for label in b['labels']], dtype=torch.long)
        if split != 'test' and val_size:
            index = split_indices(len(labels), {'val': val_size / len(labels)}, split_seed)[split]
            images, labels = images[index], labels[index]
        elif split == 'val':
            raise ValueError("split 'val' needs val_size > 0 (training images held out)")
        self.classes = [str(name) for name in read_batch(folder / 'batches.meta')['label_names']]
        super().__init__({'image': images, 'label': labels}, transforms)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays, and refuses every other class: a pickle
    can run any code it names, and these files come from the internet."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype')}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-10 file')
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One pickled CIFAR-10 file (`data`, `labels`, or `label_names` for batches.meta). The
    archive's files were written by Python 2: latin-1 reads their strings (as torchvision does)."""
    with open(path, 'rb') as f:
        return _ArraysOnly(f, encoding='latin1').load()
