"""LastCheckpoint: `ckpt/last.ckpt` rewritten after every training epoch, for --resume."""
from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that always keeps the latest state as `last.ckpt`.

    Lightning's own `save_last=True` only refreshes last.ckpt when a top-k checkpoint is saved,
    so with `monitor: val/acc` it can lag many epochs behind; a resume must continue from the
    latest epoch instead. It has its own state key, so it never collides with the user's
    ModelCheckpoint in a checkpoint file.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename='last', monitor=None, save_top_k=1, every_n_epochs=1,
                         save_on_train_epoch_end=True, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return 'LastCheckpoint'
