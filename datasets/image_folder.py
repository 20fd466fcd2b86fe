"""A folder of images (PNG, JPEG, ...), for prediction on files of your own."""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from datasets import register
from datasets.transforms import check_sample_transforms, sample_pipeline
from utils import TransformSpec

SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
# torchvision 0.29 warns at every decode that TorchCodec will take image decoding over; the
# readers still work, and a warning per file read would bury every other message.
DECODER_NOTICE = 'The image decoding and encoding capabilities of TorchVision are deprecated'


def read_image(path: str, channels: int, size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A file as float (channels, H, W) in [0, 1], decoded by torchvision (resized to `size`)."""
    from torchvision.io import ImageReadMode, decode_image, read_file  # torchvision
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=DECODER_NOTICE, category=DeprecationWarning)
        image = decode_image(read_file(path), mode=mode).float().div_(255.0)
    if size is not None and tuple(image.shape[1:]) != tuple(size):
        image = F.interpolate(image.unsqueeze(0), size=tuple(size), mode='bilinear', antialias=True)[0]
    return image


@register('image_folder')
class ImageFolder(Dataset):
    """`{'image': float (channels, *size) in [0, 1]}` for every image file in `root`, sorted by name
    (no labels: `--predict --data FOLDER` reads one; `labelled_images` reads class folders).

    Args:
        root: the folder.
        channels: 1 (grey) or 3 (RGB).
        size: (height, width) the images are resized to, e.g. the training images' size.
        transforms: `torchvision.transforms.v2` specs applied to each image after that (the
            evaluation transforms, such as Normalize).
    """

    def __init__(self, root: str, channels: int = 1, size: Sequence[int] = (28, 28),
                 transforms: Optional[Sequence[TransformSpec]] = None) -> None:
        self.files = sorted(str(p) for p in Path(root).iterdir() if p.suffix.lower() in SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f'no image files ({", ".join(SUFFIXES)}) in {root}')
        self.channels, self.size = channels, tuple(size)
        self.transform = sample_pipeline(transforms)

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> list[tuple[str, str]]:
        """MixUp and CutMix need batches: refused before anything is built."""
        return check_sample_transforms(args.get('transforms'))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = read_image(self.files[index], self.channels, self.size)
        return {'image': self.transform(image) if self.transform else image}
