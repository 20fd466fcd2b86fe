"""Every torchvision classification model by name: `{name: torchvision.resnet18, args: {num_classes: 10}}`.

The `torchvision.*` names are not registered one by one: `utils.TorchvisionModels` (a
`ModelZoo`), the model registry's fallback, makes one subclass of `TorchvisionClassifier` per
torchvision builder, with a signature that joins this adapter's arguments to the builder's and
its model class's, so configs are checked like any model's (`--list models` shows them all).
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from models import batch_input


class ImageModel(nn.Module):
    """What the model zoos' adapters share: `self.net` fed `batch[image_key]`, resized to
    `input_size` x `input_size` first (bilinear) where that is set; returns its logits."""

    net: nn.Module
    image_key: str
    input_size: Optional[int]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images = batch_input(batch, self.image_key)
        if self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode='bilinear',
                                   align_corners=False)
        return self.net(images)


class TorchvisionClassifier(ImageModel):
    """A torchvision classification model fed `batch[image_key]`; returns its logits.

    Args:
        in_channels: the images' channel count when it is not 3 (e.g. 1 for grey images): the
            first convolution is replaced by one taking this many channels (with pretrained
            weights, its kernels start as the mean over the RGB ones).
        image_key: the batch key holding the images, (N, C, H, W).
        input_size: resize the images to input_size x input_size first (bilinear), for small
            images that the model's downsampling would reduce to one pixel too early.
        **builder_args: the torchvision builder's own: `num_classes`, `weights` (a name such as
            'DEFAULT'; downloaded by torchvision), `dropout`, ...
    """

    builder = ''   # the torchvision builder's name, set by `for_builder`

    def __init__(self, in_channels: Optional[int] = None, image_key: str = 'image',
                 input_size: Optional[int] = None, **builder_args: Any) -> None:
        super().__init__()
        import torchvision  # torchvision: only when its models, transforms or files are used
        self.net = torchvision.models.get_model(self.builder, **builder_args)
        if in_channels is not None:
            adapt_first_conv(self.net, in_channels)
        self.image_key, self.input_size = image_key, input_size

    def example_batch(self, n: int) -> dict[str, torch.Tensor]:
        """A batch this model takes, for the registry-wide model test."""
        first = next(m for m in self.net.modules() if isinstance(m, nn.Conv2d))
        return {self.image_key: torch.rand(n, first.in_channels, 32, 32)}

    @staticmethod
    def architectures() -> list[str]:
        """torchvision's classification builders."""
        import torchvision  # torchvision: only when its models, transforms or files are used
        return torchvision.models.list_models(module=torchvision.models)

    @classmethod
    def for_builder(cls, name: str) -> type:
        """The class `torchvision.<name>` stands for, with the signature configs are checked against."""
        subclass = type(f'torchvision.{name}', (cls,), {'builder': name, '__module__': cls.__module__,
                                                        '__doc__': cls.__doc__})
        subclass.__signature__ = builder_signature(name)
        return subclass


def builder_signature(name: str) -> inspect.Signature:
    """This adapter's arguments, then the builder's (`weights` as a name, `progress`), then the
    model class's constructor arguments that have defaults (`num_classes`, `dropout`, ...: the
    ones without, such as ResNet's `block`, are the builder's to choose)."""
    import torchvision  # torchvision: only when its models, transforms or files are used
    builder = torchvision.models.get_model_builder(name)
    kw = inspect.Parameter.KEYWORD_ONLY
    hints = typing.get_type_hints(TorchvisionClassifier.__init__)
    own = inspect.signature(TorchvisionClassifier).parameters.items()
    params = [p.replace(kind=kw, annotation=hints[n]) for n, p in own if n != 'builder_args']
    params.append(inspect.Parameter('weights', kw, default=None, annotation=Optional[str]))
    params.append(inspect.Parameter('progress', kw, default=True, annotation=bool))
    try:
        model_class = typing.get_type_hints(builder).get('return')
        init = inspect.signature(model_class.__init__).parameters.values() if inspect.isclass(model_class) else None
    except Exception:   # an unannotated builder: accept any argument, as its **kwargs does
        init = None
    if init is None:
        return inspect.Signature(params + [inspect.Parameter('builder_args', inspect.Parameter.VAR_KEYWORD)])
    taken = {p.name for p in params}
    params += [p.replace(kind=kw) for p in init if p.name not in taken and p.name != 'self'
               and p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD]
    return inspect.Signature(params)


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d of `model` by one taking `in_channels` channels, same otherwise."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups if child.groups == 1 else in_channels,
                                 bias=child.bias is not None, padding_mode=child.padding_mode)
                with torch.no_grad():   # pretrained kernels stay meaningful: their mean over the channels
                    conv.weight.copy_(child.weight.mean(1, keepdim=True).expand_as(conv.weight))
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, child_name, conv)
                return
    raise ValueError(f'{type(model).__name__} has no Conv2d whose input channels in_channels could set')
