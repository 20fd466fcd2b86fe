"""LastCheckpoint: `ckpt/last.ckpt` rewritten after every training epoch, for an exact --resume."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from lightyaml.run.checkpoint_files import rng_state, set_rng_state
from lightyaml.train.optim import step_scheduler


class LastCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that always keeps the latest state as `last.ckpt`.

    Lightning's own `save_last=True` only refreshes last.ckpt when a top-k checkpoint is saved,
    so with `monitor: val/acc` it can lag many epochs behind; a resume must continue from the
    latest epoch instead. It has its own state key, so it never collides with the user's
    ModelCheckpoint in a checkpoint file.

    Its state carries the Python, NumPy and torch generator states, restored on resume before
    the next epoch draws its shuffle and dropout masks, so a resumed run matches an
    uninterrupted one bit for bit. (train_pl.py gives the Trainer AtomicCheckpointIO, which writes
    `last.ckpt.tmp` beside it and renames it, so a kill during a write leaves the previous one intact.)
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename='last', monitor=None, save_top_k=1, every_n_epochs=1,
                         save_on_train_epoch_end=True, enable_version_counter=False)

        self._plateau_values: list[float] = []   # monitored values at the last save
        self._plateau_replay: list[float] = []   # ... to step ReduceLROnPlateau with after a resume

    @property
    def state_key(self) -> str:
        return 'LastCheckpoint'

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ReduceLROnPlateau steps after this save and Lightning skips that step when it restarts
        # from here, so the value it would have used travels in the checkpoint.
        self._plateau_values = [float(trainer.callback_metrics[c.monitor]) for c in trainer.lr_scheduler_configs
                                if c.reduce_on_plateau and c.monitor in trainer.callback_metrics]
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        plateaus = [c for c in trainer.lr_scheduler_configs if c.reduce_on_plateau]
        for config, value in zip(plateaus, self._plateau_replay):
            step_scheduler(config.scheduler, value)
        self._plateau_replay = []

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), 'rng': rng_state(), 'plateau': self._plateau_values}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if 'rng' in state_dict:
            set_rng_state(state_dict['rng'])
        self._plateau_replay = list(state_dict.get('plateau', []))
