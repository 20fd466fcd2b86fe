"""Labelled images in torchvision's folder layout, `root/<class>/<file>`, loaded file by file."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from datasets import register
from datasets.image_folder import SUFFIXES, ImageFolder
from datasets.transforms import sample_pipeline
from utils import PROJECT_ROOT, TransformSpec


@register('labelled_images')
class LabelledImages(ImageFolder):
    """`{'image': float (channels, H, W) in [0, 1], then transformed, 'label': long}` for every image
    in the class folders of `root` (PNG, JPEG, BMP, GIF), decoded by `torchvision.io`.

    Class `i` is the i-th sub-folder in name order, as torchvision's ImageFolder numbers them;
    `classes` holds their names (each run records them in classes.yaml, so `--predict` can say
    `cat` rather than `3`). Files are read in the loader's worker processes
    (`data_module.args.num_workers`).

    Args:
        root: the folder of class folders (relative paths are relative to the project folder).
        channels: 1 (grey) or 3 (RGB): every image is converted to it.
        size: (height, width) every image is resized to first; leave out when they share a size
            (or give a Resize/RandomResizedCrop transform).
        transforms: `torchvision.transforms.v2` specs, applied in order to each image, e.g.
            `[{name: RandomCrop, args: {size: 32, padding: 4}}, {name: RandomHorizontalFlip}]`.
        classes: the class folders to use, in label order (default: all, sorted by name); give
            them to keep the same labels when a split lacks a class.
    """

    def __init__(self, root: str, channels: int = 3, size: Optional[Sequence[int]] = None,
                 transforms: Optional[Sequence[TransformSpec]] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        folder = Path(root) if Path(root).is_absolute() else PROJECT_ROOT / root
        if not folder.is_dir():
            raise FileNotFoundError(f'no folder {folder}: expected one sub-folder of images per class')
        found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))
        self.classes = list(classes) if classes is not None else found
        missing = [c for c in self.classes if c not in found]
        if missing or not self.classes:
            raise FileNotFoundError(f'{folder}: no class folder {", ".join(missing) or "at all"} '
                                    f'(expected {folder}/<class>/<image file>)')
        self.files, labels = [], []
        for label, name in enumerate(self.classes):
            images = sorted(str(p) for p in (folder / name).iterdir() if p.suffix.lower() in SUFFIXES)
            self.files += images
            labels += [label] * len(images)
        if not self.files:
            raise FileNotFoundError(f'no image files ({", ".join(SUFFIXES)}) in the class folders of {folder}')
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.channels, self.size = channels, tuple(size) if size else None
        self.transform = sample_pipeline(transforms)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(index), 'label': self.labels[index]}
