"""ValidationHook: calls a function with the epoch's metrics after every validation and stops
training when it says so (a search trial's pruner: lightyaml/launch/trial.py). train.py calls the same
function from its loop."""
from __future__ import annotations

import pytorch_lightning as pl

from lightyaml.launch.trial import ValidationHook as HookFunction


class ValidationHook(pl.Callback):
    """After each validation (not the sanity check, nor the last epoch's: that run is complete),
    global rank 0 calls `hook(epoch, metrics)`; if it returns True every process stops at the end
    of this epoch (its checkpoints are kept)."""

    def __init__(self, hook: HookFunction) -> None:
        self._hook = hook

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        last = 0 <= max_epochs <= trainer.current_epoch + 1
        if trainer.sanity_checking or last:
            return
        stop = False
        if trainer.is_global_zero:
            stop = self._hook(trainer.current_epoch, {k: float(v) for k, v in trainer.callback_metrics.items()})
        if trainer.strategy.broadcast(stop, src=0):   # every process agrees with rank 0
            trainer.should_stop = True
