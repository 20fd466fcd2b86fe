"""ScaleLR (on with the config's `scale_lr`): every learning rate scaled with the global batch."""
from __future__ import annotations

import pytorch_lightning as pl

from lightyaml.train.optim import scale_learning_rates


class ScaleLR(pl.Callback):
    """Multiplies the learning rates of every optimizer and scheduler the module configured by
    `factor` (lightyaml/train/optim.py's `lr_scale`). Lightning calls `on_fit_start` after
    `configure_optimizers` and before it restores a checkpoint's optimizer states, so a resumed run
    continues with its saved (already scaled) rates."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scale_learning_rates(trainer.optimizers, [c.scheduler for c in trainer.lr_scheduler_configs], self.factor)
