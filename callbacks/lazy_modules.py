"""LazyModules (always on): a model with lazy modules takes its shapes before training starts."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torchmetrics
from torch import nn

from lightyaml.train.lazy import has_uninitialized, materialize


class LazyModules(pl.Callback):
    """Runs the first training batch through a module with uninitialized (lazy) parameters.

    Lightning calls `setup` after the data module's own setup and before it builds the optimizer,
    wraps the module in DDP or restores a checkpoint, so all of those see real shapes (and the
    parameter summary in log.txt counts them). Every process does the same, from the same seed.
    The batch goes through the module's own `forward` where it defines one that takes the batch,
    else through its `training_step` (`first_step`).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == 'fit' and trainer.datamodule is not None and has_uninitialized(pl_module):
            materialize(pl_module, trainer.datamodule.train_dataloader(), lambda batch: first_step(pl_module, batch))


def defines_forward(module: nn.Module) -> bool:
    """Whether the module's class (not nn.Module or LightningModule) defines `forward`."""
    return type(module).forward not in (nn.Module.forward, pl.LightningModule.forward)


def first_step(module: pl.LightningModule, batch: Any) -> None:
    """One batch through the module as training would: its `forward(batch)` where that works (and
    leaves nothing lazy), else its `training_step(batch, 0)` with logging muted and its torchmetrics
    states reset after, so that the first epoch's numbers are untouched."""
    if defines_forward(module):
        try:
            module(batch)
        except Exception:   # a forward of the inputs alone (`forward(x)` with `(x, y)` batches): the step unpacks
            pass
        if not has_uninitialized(module):
            return
    with muted_logging(module):
        module.training_step(batch, 0)
    for metric in module.modules():
        if isinstance(metric, torchmetrics.Metric):
            metric.reset()


@contextlib.contextmanager
def muted_logging(module: pl.LightningModule) -> Iterator[None]:
    """`self.log` and `self.log_dict` do nothing while the block runs (Lightning refuses them
    outside its loops)."""
    module.__dict__.update(log=lambda *args, **kwargs: None, log_dict=lambda *args, **kwargs: None)
    try:
        yield
    finally:
        module.__dict__.pop('log', None)
        module.__dict__.pop('log_dict', None)
