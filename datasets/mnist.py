"""MNIST through torchvision, rooted in `load/mnist`, held in memory as tensors."""
from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from datasets import register
from datasets.tensor_dict import TensorDictDataset, split_indices
from utils import PROJECT_ROOT, TransformSpec

FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
MEAN, STD = 0.1307, 0.3081


@register('mnist')
class MNIST(TensorDictDataset):
    """`{'image': normalised float (1, 28, 28), 'label': long}`.

    Args:
        root: folder holding `MNIST/raw/` (relative paths are relative to the project folder).
        split: 'train' and 'val' (a seeded hold-out of `val_size` training images), or 'test'.
        download: fetch the files when they are missing and the network allows it.
        transforms: batch augmentation (`torchvision.transforms.v2` specs, see TensorDictDataset).
    """

    def __init__(self, root: str = 'load/mnist', split: str = 'train', val_size: int = 5000,
                 split_seed: int = 0, download: bool = True,
                 transforms: Optional[Sequence[TransformSpec]] = None) -> None:
        if split not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        from torchvision.datasets import MNIST as TorchvisionMNIST  # torchvision
        root_path = Path(root) if Path(root).is_absolute() else PROJECT_ROOT / root
        raw = root_path / 'MNIST' / 'raw'
        for name in FILES:  # files fetched by hand are often still gzipped
            if not (raw / name).exists() and (raw / f'{name}.gz').exists():
                with gzip.open(raw / f'{name}.gz') as packed, open(raw / name, 'wb') as unpacked:
                    shutil.copyfileobj(packed, unpacked)
        missing = [f for f in FILES if not (raw / f).exists()]
        if missing and download:
            try:
                TorchvisionMNIST(str(root_path), train=True, download=True)
            except Exception as e:  # no network: say what to put where instead
                missing_note = f' (download failed: {type(e).__name__})'
            else:
                missing, missing_note = [], ''
        else:
            missing_note = '' if download else ' (download: false)'
        if missing:
            raise FileNotFoundError(f'MNIST files missing in {raw}{missing_note}: put {", ".join(missing)} '
                                    f'(or their .gz files) there')
        data = TorchvisionMNIST(str(root_path), train=split != 'test', download=False)
        images = ((data.data.float() / 255.0 - MEAN) / STD).unsqueeze(1)
        labels = data.targets.long()
        if split != 'test':
            index = split_indices(len(labels), {'val': val_size / len(labels)}, split_seed)[split]
            images, labels = images[index], labels[index]
        super().__init__({'image': images, 'label': labels}, transforms)
