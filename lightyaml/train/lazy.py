"""Lazy modules (`nn.LazyLinear`, `nn.LazyConv2d`, ...) learn their input sizes from a first batch.

Until then their parameters are uninitialized: they have no shape, so counting them, wrapping
them in DistributedDataParallel or checking checkpoint shapes fails. Both entry points run one
batch through such a model first (`materialize`), before the parameter summary, the optimizer
and DDP: the model's forward (train.py), or for a LightningModule the step it defines
(callbacks/lazy_modules.py). Lightning-free.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.parameter import is_lazy


def has_uninitialized(module: nn.Module) -> bool:
    """Whether any parameter or buffer of `module` still waits for its first batch."""
    return any(is_lazy(t) for t in (*module.parameters(), *module.buffers()))


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (in dicts, lists and tuples) on `device`: train.py's steps,
    the preflight's and the first batch of a lazy model."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch) if type(batch) in (list, tuple) else batch
    return batch


def materialize(module: nn.Module, loader: Iterable[Any], step: Optional[Callable[[Any], Any]] = None) -> bool:
    """Run the first batch of `loader` through `module` (in eval mode, without gradients) so that
    its lazy modules take their shapes: `step(batch)`, by default `module(batch)`. The random draws
    the loader and the step make are undone, so the training that follows sees the same batches
    and numbers as without this. Returns whether it ran."""
    if not has_uninitialized(module):
        return False
    device = next((t.device for t in (*module.parameters(), *module.buffers()) if not is_lazy(t)), torch.device('cpu'))
    training = module.training
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        batch = to_device(next(iter(loader)), device)
        module.eval()   # batch norm statistics and dropout are left alone
        try:
            with torch.no_grad():
                (step or module)(batch)
        finally:
            module.train(training)
    return True
