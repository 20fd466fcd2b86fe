"""A folder of images (PNG, JPEG, ...), for prediction on files of your own."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from datasets import register

SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


@register('image_folder')
class ImageFolder(Dataset):
    """`{'image': float (channels, *size) in [0, 1]}` for every image file in `root`, sorted by name.

    Args:
        root: the folder.
        channels: 1 (grey) or 3 (RGB).
        size: (height, width) the images are resized to, e.g. the training images' size.
    """

    def __init__(self, root: str, channels: int = 1, size: Sequence[int] = (28, 28)) -> None:
        self.files = sorted(str(p) for p in Path(root).iterdir() if p.suffix.lower() in SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f'no image files ({", ".join(SUFFIXES)}) in {root}')
        self.channels, self.size = channels, tuple(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import numpy as np
        from PIL import Image   # Pillow comes with torchvision and matplotlib
        with Image.open(self.files[index]) as file:
            pixels = np.asarray(file.convert('L' if self.channels == 1 else 'RGB'), dtype=np.float32) / 255.0
        image = torch.from_numpy(pixels).reshape(*pixels.shape[:2], -1).permute(2, 0, 1).unsqueeze(0)
        return {'image': F.interpolate(image, size=self.size, mode='bilinear', antialias=True)[0]}
