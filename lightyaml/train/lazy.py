"""Lazy modules (`nn.LazyLinear`, `nn.LazyConv2d`, ...) learn their input sizes from a first batch.

Until then their parameters are uninitialized: they have no shape, so counting them, wrapping
them in DistributedDataParallel or checking checkpoint shapes fails. Both entry points run one
batch through such a model first (`materialize`), before the parameter summary, the optimizer
and DDP. Lightning-free: train.py and callbacks/lazy_modules.py use it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy


def has_uninitialized(module: nn.Module) -> bool:
    """Whether any parameter or buffer of `module` still waits for its first batch."""
    return any(is_lazy(t) for t in (*module.parameters(), *module.buffers()))


def materialize(module: nn.Module, loader: Iterable[Mapping[str, Any]]) -> bool:
    """Run the first batch of `loader` through `module` (in eval mode, without gradients) so that
    its lazy modules take their shapes. The draws the loader makes to shuffle are undone, so the
    training that follows sees the same batches as without this. Returns whether it ran."""
    if not has_uninitialized(module):
        return False
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(loader))
    device = next((t.device for t in (*module.parameters(), *module.buffers()) if not is_lazy(t)), torch.device('cpu'))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    training = module.training
    module.eval()   # batch norm statistics and dropout are left alone
    with torch.no_grad():
        module(batch)
    module.train(training)
    return True
