"""FastPaths (always on): the per-step costs Lightning adds on top of the training step, removed."""
from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from utils import keep_freed_memory, resume_gc

# Hooks Lightning calls once or more per training batch. Each call of a hook costs 1-4 us (a
# profiler context, the callback's state key) even when it does nothing; with six callbacks that
# is about 0.05 ms a step, a fifth of a small MLP's whole step. (Not the evaluation loop's: it
# inspects their signatures.)
BATCH_HOOKS = ('on_train_batch_start', 'on_before_backward', 'on_after_backward', 'on_before_optimizer_step',
               'on_before_zero_grad', 'on_train_batch_end')
NVML_CHECK = 'PYTORCH_NVML_BASED_CUDA_CHECK'


class FastPaths(pl.Callback):
    """Two costs Lightning adds to every step, removed where that changes nothing else, and what
    train.py does too once training starts: `keep_freed_memory` and `resume_gc`.

    1. Lightning calls every batch hook of every callback and of the LightningModule, and skips
       a hook that is not callable. A hook still inherited unchanged from `pl.Callback` or
       `pl.LightningModule` does nothing, so it is set to None on that object for the run; so is
       the batch hook of a ModelCheckpoint that saves neither every N steps nor every T seconds
       (it returns at once, but Lightning first spends 13 us on its state key, every step).
    2. Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that looking for GPUs
       before it starts its processes cannot initialise CUDA (a forked process could not use it
       then). With it set, every `torch.cuda.is_available()` loads NVML afresh, and Adam and
       AdamW call it at every step: 0.16 ms a step on 2 CPU cores, more than a small MLP's whole
       step. Once training starts the processes are running, so it is unset until training ends.
    """

    def __init__(self) -> None:
        self._nvml_check: str | None = None
        self._skipped: list[tuple[Any, str]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        objects = [(pl_module, pl.LightningModule)] + [(c, pl.Callback) for c in trainer.callbacks]
        self._skipped = [(obj, hook) for obj, base in objects for hook in BATCH_HOOKS
                         if hook not in vars(obj) and (getattr(type(obj), hook) is getattr(base, hook)
                                                       or (hook == 'on_train_batch_end' and idle_per_step(obj)))]
        for obj, hook in self._skipped:
            object.__setattr__(obj, hook, None)   # not nn.Module's: a None is not a module

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._nvml_check = os.environ.pop(NVML_CHECK, None)
        keep_freed_memory()
        resume_gc()   # paused for start-up when train_pl.py runs as a script

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._nvml_check is not None:
            os.environ[NVML_CHECK] = self._nvml_check

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for obj, hook in self._skipped:
            object.__delattr__(obj, hook)
        self._skipped = []


def idle_per_step(callback: pl.Callback) -> bool:
    """A ModelCheckpoint that saves neither every N steps nor every T seconds returns at once from
    its batch hook."""
    return (isinstance(callback, ModelCheckpoint) and callback._every_n_train_steps < 1
            and callback._train_time_interval is None)
