"""Every timm model by name, where timm is installed: `{name: timm.resnet18, args: {num_classes: 10}}`.

timm (`pip install timm`, in requirements-optional.txt) is the model zoo vision users reach for
first. Its names are not registered one by one: `utils.ModelZoo`, behind the torchvision one in
the model registry's fallbacks, makes one subclass of `TimmClassifier` per architecture
(`timm.list_models()`), so `--list models` shows them. Nothing downloads: pretrained weights come
from a local file named by `weights_file`, which timm loads as the architecture's pretrained
weights (adapting the first convolution to `in_chans` and dropping a classifier whose class count
differs, as it does for its own downloads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from models.torchvision_models import ImageModel


class TimmClassifier(ImageModel):
    """A timm model fed `batch[image_key]`; returns its logits.

    Args:
        num_classes: the classifier's outputs (timm's default: the architecture's, 1000 for ImageNet).
        in_chans: the images' channel count (timm's default 3; 1 for grey images).
        weights_file: a local file of pretrained weights for this architecture (.safetensors,
            .pth or .bin, e.g. from the model's Hugging Face page), relative to the working folder.
        image_key: the batch key holding the images, (N, C, H, W).
        input_size: resize the images to input_size x input_size first (bilinear), for small images.
        **model_args: the architecture's own arguments (`drop_rate`, `global_pool`, ...), as
            `timm.create_model` takes them.
    """

    architecture = ''   # timm's model name, set by `for_builder`

    def __init__(self, num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                 weights_file: Optional[str] = None, image_key: str = 'image', input_size: Optional[int] = None,
                 **model_args: Any) -> None:
        super().__init__()
        import timm  # timm: an optional dependency, imported only for its models
        if model_args.get('pretrained'):
            raise ValueError("pretrained: true would download; give the weights as a local file: weights_file: PATH")
        if weights_file is not None:
            if not Path(weights_file).is_file():
                raise FileNotFoundError(f'weights_file {weights_file}: no such file')
            model_args.update(pretrained=True, pretrained_cfg_overlay={'file': str(weights_file)})
        sizes = {'num_classes': num_classes, 'in_chans': in_chans}
        self.net = timm.create_model(self.architecture, **{k: v for k, v in sizes.items() if v is not None},
                                     **model_args)
        self.image_key, self.input_size, self.in_chans = image_key, input_size, in_chans

    def example_batch(self, n: int) -> dict[str, torch.Tensor]:
        """A batch this model takes, for the registry-wide model test: the input size timm records."""
        channels, height, width = self.net.pretrained_cfg.get('input_size', (3, 224, 224))
        size = (self.input_size, self.input_size) if self.input_size else (height, width)
        return {self.image_key: torch.rand(n, self.in_chans or channels, *size)}

    @staticmethod
    def architectures() -> list[str]:
        """timm's model names."""
        import timm  # timm: an optional dependency, imported only for its models
        return timm.list_models()

    @classmethod
    def for_builder(cls, name: str) -> type:
        """The class `timm.<name>` stands for."""
        return type(f'timm.{name}', (cls,), {'architecture': name, '__module__': cls.__module__,
                                             '__doc__': cls.__doc__})
