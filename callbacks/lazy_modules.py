"""LazyModules (always on): a model with lazy modules takes its shapes before training starts."""
from __future__ import annotations

import pytorch_lightning as pl

from lightyaml.train.lazy import has_uninitialized, materialize


class LazyModules(pl.Callback):
    """Runs the first training batch through a module with uninitialized (lazy) parameters.

    Lightning calls `setup` after the data module's own setup and before it builds the optimizer,
    wraps the module in DDP or restores a checkpoint, so all of those see real shapes (and the
    parameter summary in log.txt counts them). Every process does the same, from the same seed.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == 'fit' and trainer.datamodule is not None and has_uninitialized(pl_module):
            materialize(pl_module, trainer.datamodule.train_dataloader())
