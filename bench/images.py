"""The `images` workload of bench/run.py: images per second through lightyaml's loader against a
plain torchvision ImageFolder + DataLoader script, with the same workers, batch size and transforms."""
from __future__ import annotations

import time
from pathlib import Path

LOADER_VARIANTS = ('torchvision ImageFolder', 'lightyaml loader')


def write_image_files(workload: dict, root: Path) -> Path:
    """`files` random RGB PNGs of `size` pixels in 10 class folders (root/<class>/<n>.png)."""
    import warnings

    import torch
    from torchvision.io import write_png
    generator = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():   # torchvision 0.29's notice about TorchCodec, once per file otherwise
        warnings.simplefilter('ignore', DeprecationWarning)
        for n in range(workload['files']):
            folder = root / f'class_{n % 10}'
            folder.mkdir(parents=True, exist_ok=True)
            size = workload['size']
            pixels = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
            write_png(pixels, str(folder / f'{n:05d}.png'))
    return root


def load_images(workload: dict, variant: str, steps: list[float]) -> None:
    """Read every batch of the image folder for `epochs` epochs, a timestamp per batch: through
    torchvision's ImageFolder and a DataLoader, or through lightyaml's data module."""
    loader = image_loader(workload, variant)
    for _ in range(workload['epochs']):
        for _batch in loader:
            steps.append(time.perf_counter())


def image_loader(workload: dict, variant: str) -> object:
    """The loader of `variant` over the image folder `workload['root']`."""
    import torch
    if variant == 'lightyaml loader':
        from datasets.data_module import DataModule
        loader = DataModule(train={'name': 'labelled_images', 'args': {'root': workload['root'], 'channels': 3,
                                                                       'transforms': workload['transforms']}},
                            batch_size=workload['batch_size'], num_workers=workload['workers']).train_dataloader()
    else:   # the plain script, as torchvision's documentation writes it
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        from datasets.transforms import build_transform
        transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                *[build_transform(spec) for spec in workload['transforms']]])
        loader = DataLoader(ImageFolder(workload['root'], transform=transform), batch_size=workload['batch_size'],
                            shuffle=True, num_workers=workload['workers'], persistent_workers=workload['workers'] > 0,
                            pin_memory=torch.cuda.is_available())
    return loader
