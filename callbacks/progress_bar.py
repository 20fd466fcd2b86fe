"""ThrottledProgressBar: Lightning's tqdm bar, redrawn at most ten times a second, with epochs
numbered from 1 as in log.txt."""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's bar redraws itself and its metrics after every training step, which costs
    about 0.1 ms on a CPU: as much as a small model's whole step. This one redraws at most every
    `min_interval` seconds, and always on an epoch's last batch."""

    def __init__(self, min_interval: float = 0.1) -> None:
        super().__init__()
        self.min_interval = min_interval
        self._last_draw = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # Lightning's own, but its bar says "Epoch 0" for the epoch log.txt calls "epoch 1/30".
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        total = f'/{trainer.max_epochs}' if trainer.max_epochs and trainer.max_epochs > 0 else ''
        self.train_progress_bar.set_description(f'epoch {trainer.current_epoch + 1}{total}')

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or batch_idx + 1 == self.total_train_batches:
            self._last_draw = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
