"""Training wrappers: LightningModules that turn specs into a model, loss and optimizers.

Add one: a new file here with `@register('name')` on a `pl.LightningModule` (or on
`WrapperModule`, which is one with a per-step cost removed and the epoch bookkeeping the
built-in wrappers share), then name it in `train_wrapper.name`. Only train_pl.py imports this
package.
"""
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from utils import WRAPPERS

register, make = WRAPPERS.register, WRAPPERS.make


class WrapperModule(pl.LightningModule):
    """A LightningModule that sets `_current_fx_name` directly. Lightning sets it around every
    hook it calls, about 30 times a step, and nn.Module's `__setattr__` (which looks for
    parameters, buffers and submodules first) makes that 0.06 ms a step on a CPU."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == '_current_fx_name':
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def is_last_train_batch(self, batch_idx: int) -> bool:
        """This batch ends the training epoch (its last batch, a batch limit, or max_steps)."""
        trainer = self.trainer
        return (trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
                or 0 < trainer.max_steps <= trainer.global_step)

    def sum_across_processes(self, tensor: Any) -> Any:
        """A tensor summed over all processes (itself with one)."""
        return self.trainer.strategy.reduce(tensor, reduce_op='sum')

    def log_epoch_means(self, values: Mapping[str, float]) -> None:
        """Log an epoch's means. They are already exact over all processes (sums and counts
        reduced together); a 'max' sync of identical values keeps them bit-exact and tells
        Lightning they are synced."""
        self.log_dict(dict(values), on_step=False, on_epoch=True, sync_dist=True, reduce_fx='max',
                      add_dataloader_idx=False)
