"""Transforms named in YAML: each a `torchvision.transforms.v2` class by name with its arguments.

A dataset loaded file by file (`labelled_images`, `image_folder`) applies its `transforms` to each
sample (`sample_pipeline`). An in-memory dataset (digits, mnist, cifar10) applies them to whole
batches on the device the data is on (`BatchAugment`): flips and random crops are redrawn for
every image of the batch in one vectorised operation, MixUp and CutMix are torchvision's own
(they work on batches by design), and deterministic transforms (Normalize, Resize, ...) run on
the batch as they are. Random transforms that would draw one setting for the whole batch are
refused by `check_batch_transforms` before anything is built.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch.nn import functional as F

from utils import TRANSFORMS

# Redrawn per image, vectorised over the batch (torchvision's would flip or crop all of it alike).
PER_IMAGE = ('RandomHorizontalFlip', 'RandomVerticalFlip', 'RandomCrop')
# Batch transforms by design: they mix the images and labels of a batch (labels become soft).
MIXING = ('MixUp', 'CutMix')
DETERMINISTIC = ('Normalize', 'Resize', 'CenterCrop', 'Pad', 'Grayscale', 'RGB', 'ToDtype', 'Identity')
PAD_MODES = {'constant': 'constant', 'edge': 'replicate', 'reflect': 'reflect'}


def build_transform(spec: Mapping) -> Any:
    """One v2 transform from `{name, args}`; a `transforms` argument holds specs of its own
    (`RandomChoice`, `RandomApply`, `Compose`)."""
    inner = (spec.get('args') or {}).get('transforms')
    extra = {'transforms': [build_transform(s) for s in inner]} if isinstance(inner, list) else None
    return TRANSFORMS.make(spec, args=extra)


def sample_pipeline(specs: Optional[Sequence[Mapping]]) -> Optional[Callable]:
    """The per-sample transforms of a dataset loaded file by file, composed (None if there are none)."""
    if not specs:
        return None
    from torchvision.transforms import v2  # torchvision: only when its models, transforms or files are used
    return v2.Compose([build_transform(s) for s in specs])


def _mixes(spec: Any) -> bool:
    """Whether a spec is MixUp/CutMix, or a RandomChoice/RandomApply of them only."""
    if not isinstance(spec, Mapping):
        return False
    inner = (spec.get('args') or {}).get('transforms')
    if isinstance(inner, list) and inner:
        return all(_mixes(s) for s in inner)
    return spec.get('name') in MIXING


def _known(spec: Any) -> bool:
    """Whether a spec and the specs inside it name transforms that exist (else the spec check says so)."""
    if not isinstance(spec, Mapping) or spec.get('name') not in TRANSFORMS.names():
        return False
    inner = (spec.get('args') or {}).get('transforms') if isinstance(spec.get('args'), Mapping) else None
    return all(_known(s) for s in inner) if isinstance(inner, list) else True


def check_sample_transforms(specs: Any) -> list[tuple[str, str]]:
    """Problems of a file-by-file dataset's transforms: MixUp and CutMix need whole batches."""
    return [(f'transforms.{i}.name', f"{spec['name']} mixes the images of a batch; a dataset loaded file by "
                                     f"file transforms one image at a time (use it on in-memory data)")
            for i, spec in enumerate(specs or []) if _known(spec) and _mixes(spec)]


def check_batch_transforms(specs: Any) -> list[tuple[str, str]]:
    """Problems of an in-memory dataset's transforms, which run batch by batch (see the module)."""
    problems = []
    for i, spec in enumerate(specs or []):
        if not _known(spec):
            continue   # the spec check reports it
        name = spec['name']
        if name == 'RandomCrop' and (spec.get('args') or {}).get('padding_mode', 'constant') not in PAD_MODES:
            problems.append((f'transforms.{i}.args.padding_mode', f"in-memory batches are padded with one of "
                                                                  f"{', '.join(PAD_MODES)}"))
        if name not in PER_IMAGE + DETERMINISTIC and not _mixes(spec):
            problems.append((f'transforms.{i}.name', f'{name} is not applied to in-memory data, which is '
                             f'augmented batch by batch on its device; it takes {", ".join(PER_IMAGE + MIXING)}, '
                             f'RandomChoice of MixUp/CutMix, and {", ".join(DETERMINISTIC)} (use a dataset '
                             f'loaded file by file, such as labelled_images, for other transforms)'))
    return problems


class BatchAugment:
    """An in-memory dataset's transforms, applied to each batch `{'image': (N, C, H, W), ...}`.

    Random draws come from generators of its own, reseeded from the global generator at the start
    of every epoch (`reseed`): the draws are then the same whether the loader runs ahead of the
    training step or not (Lightning fetches one batch ahead, train.py does not), and a resumed run
    repeats them, since the global generator's state is in the checkpoint.
    """

    def __init__(self, specs: Sequence[Mapping], image_key: str = 'image') -> None:
        self.image_key = image_key
        self.steps = [self._step(spec) for spec in specs]
        self.random = any(spec['name'] not in DETERMINISTIC for spec in specs)
        self.generator: Optional[torch.Generator] = None
        self.cpu_generator = torch.Generator()

    def _step(self, spec: Mapping) -> Callable[[dict], dict]:
        args = dict(spec.get('args') or {})
        if spec['name'] in ('RandomHorizontalFlip', 'RandomVerticalFlip'):
            dim = -1 if spec['name'] == 'RandomHorizontalFlip' else -2
            return lambda batch: self._images(batch, self.flip(batch[self.image_key], args.get('p', 0.5), dim))
        if spec['name'] == 'RandomCrop':
            return lambda batch: self._images(batch, self.crop(batch[self.image_key], **args))
        transform = build_transform(spec)
        return (lambda batch: self._with_own_rng(transform, batch)) if spec['name'] not in DETERMINISTIC else transform

    def _images(self, batch: dict, images: torch.Tensor) -> dict:
        return {**batch, self.image_key: images}

    def reseed(self, seed: int, device: torch.device) -> None:
        """Start the epoch's draws from `seed`, on the device the batches are on."""
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.cpu_generator.manual_seed(seed)

    def __call__(self, batch: dict) -> dict:
        if self.generator is None:
            self.reseed(torch.initial_seed(), batch[self.image_key].device)
        for step in self.steps:
            batch = step(batch)
        return batch

    def _with_own_rng(self, transform: Callable, batch: dict) -> dict:
        # torchvision's MixUp and CutMix draw from the global CPU generator: lend them ours.
        saved = torch.get_rng_state()
        torch.set_rng_state(self.cpu_generator.get_state())
        try:
            return transform(batch)
        finally:
            self.cpu_generator.set_state(torch.get_rng_state())
            torch.set_rng_state(saved)

    def flip(self, images: torch.Tensor, p: float, dim: int) -> torch.Tensor:
        """Each image flipped along `dim` with probability `p`."""
        chosen = torch.rand(len(images), device=images.device, generator=self.generator) < p
        return torch.where(chosen.view(-1, *[1] * (images.dim() - 1)), images.flip(dim), images)

    def crop(self, images: torch.Tensor, size: Any, padding: Any = None, pad_if_needed: bool = False,
             fill: Any = 0, padding_mode: str = 'constant') -> torch.Tensor:
        """torchvision's RandomCrop with a position drawn for each image: pad the batch once, then
        gather every image's window in one indexing operation."""
        height, width = (size, size) if isinstance(size, int) else size
        if padding:
            pad = [padding] * 4 if isinstance(padding, int) else list(padding) * (4 // len(padding))
            left, top, right, bottom = pad if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
            images = F.pad(images, (left, right, top, bottom), mode=PAD_MODES[padding_mode],
                           **({'value': float(fill)} if padding_mode == 'constant' else {}))
        n, _, padded_h, padded_w = images.shape
        if pad_if_needed and (padded_h < height or padded_w < width):
            images = F.pad(images, (0, max(width - padded_w, 0), 0, max(height - padded_h, 0)))
            n, _, padded_h, padded_w = images.shape
        device = images.device
        top = torch.randint(0, padded_h - height + 1, (n,), device=device, generator=self.generator)
        left = torch.randint(0, padded_w - width + 1, (n,), device=device, generator=self.generator)
        rows = (top[:, None] + torch.arange(height, device=device))[:, :, None]
        cols = (left[:, None] + torch.arange(width, device=device))[:, None, :]
        # NHWC indexing gives (N, H, W, C); viewed back as NCHW it is channels_last in memory.
        return images.permute(0, 2, 3, 1)[torch.arange(n, device=device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
