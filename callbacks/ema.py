"""The `ema` callback: an exponential moving average of the weights (lightyaml/train/ema.py has the rule,
which train.py runs too).

    callbacks:
      - {name: ema, args: {decay: 0.999, start_step: 0, every_n_steps: 1, validate_with_ema: true}}
"""
from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.strategies import FSDPStrategy

from callbacks import register
from lightyaml.train import fsdp
from lightyaml.train.ema import EMA, STATE_KEY, EMAParams, ema_target


@register('ema')
class EMACallback(pl.Callback):
    """Keeps the average of the model's weights after every optimizer step; with
    `validate_with_ema` validation runs on the average (then the trained weights come back, bit for
    bit). Checkpoints keep it under `callbacks.EMA`; the `state_dict` stays the trained weights.

    Not Lightning's EMAWeightAveraging: that one writes the average into `state_dict` (so a resume
    and train.py would read the wrong weights) and has no train.py twin. See `EMAParams` for the
    arguments.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, every_n_steps: int = 1,
                 validate_with_ema: bool = True) -> None:
        self.params = EMAParams(decay=decay, start_step=start_step, every_n_steps=every_n_steps,
                                validate_with_ema=validate_with_ema)
        self.ema: Optional[EMA] = None
        self._restored: Optional[dict[str, Any]] = None   # from a checkpoint, until the model is on its device
        self._last_step = 0
        self._trainer: Optional[pl.Trainer] = None

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here every state is restored, whatever the strategy (FSDP restores after its setup, after
        # on_fit_start), and the weights are on their device: the average starts as a copy.
        self._trainer, target = trainer, ema_target(pl_module)
        if isinstance(trainer.strategy, FSDPStrategy):   # this process's shards (lightyaml/train/fsdp.py)
            self.ema = EMA(target, self.params, live=fsdp.shard_views(target))
            if self._restored is not None:
                fsdp.shard_ema_weights(trainer.strategy, self.ema, pl_module, self._restored['weights'])
        else:
            self.ema = EMA(target, self.params)
            if self._restored is not None:
                self.ema.load_state_dict(self._restored)
        self._restored = None
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self._last_step:   # an optimizer step was taken (not accumulating)
            self._last_step = trainer.global_step
            self.ema.update(trainer.global_step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (Not in the sanity check before training: it logs nothing, and the average starts at on_train_start.)
        if self.ema is not None and self.params.validate_with_ema:
            self.ema.swap_in()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before ModelCheckpoint saves (Lightning calls checkpoint callbacks last): the file gets
        # the trained weights in state_dict and the average in the callback state.
        if self.ema is not None:
            self.ema.swap_out()

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {}
        if isinstance(self._trainer.strategy, FSDPStrategy):   # every process gathers; rank 0's is saved
            return {**self.ema.state_dict(),
                    'weights': fsdp.whole_ema_weights(self._trainer.strategy, self.ema, self._trainer.lightning_module)}
        return self.ema.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._restored = state_dict
