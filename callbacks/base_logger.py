"""BaseLogger (always on): the experiment folder and its per-epoch log.txt line. (ExperimentLogger,
Lightning's logger over metrics.csv and tb/, lives in lightyaml/train/lightning.py.)"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl

from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.metrics_files import format_epoch_line, model_summary
from lightyaml.train.lightning import Deferred, ExperimentLogger  # noqa: F401 (their home before; forks import them here)


class BaseLogger(pl.Callback):
    """Creates `save/<name>` (or continues it on resume) and writes one log.txt line per epoch.

    Only global rank 0 touches the folder. The elapsed time survives a resume in the callback's
    state, so the estimated total stays meaningful.

    Args:
        exp: the experiment folder.
        config: the merged config to save as config.yaml; command: the command line to record.
        resume: continue an existing folder instead of creating one.
        overwrite: move an existing folder of the same name aside first (never delete it).
    """

    def __init__(self, exp: ExperimentDir, config: Mapping, command: Sequence[str], resume: bool = False,
                 overwrite: bool = False) -> None:
        self.exp, self._config, self._command = exp, config, list(command)   # the run's: threads are added later
        self._resume, self._overwrite = resume, overwrite
        self._ready = False
        self._elapsed_before = 0.0  # training seconds of earlier sessions of this run
        self._start = self._epoch_start = time.perf_counter()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and not self._resume:
            self._begin(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed folder changes only now, once Lightning has restored every state from the
        # checkpoint: a checkpoint that does not fit leaves config.yaml and log.txt as they were.
        self._start = time.perf_counter()
        if trainer.is_global_zero:
            self._begin(pl_module)
            self.exp.log(model_summary(pl_module))   # now: lazy modules have their shapes
            # the training set's class names, for --predict
            self.exp.write_classes(getattr(getattr(trainer.train_dataloader, 'dataset', None), 'classes', None))

    def _begin(self, pl_module: pl.LightningModule) -> None:
        if self._ready:
            return
        self._ready = True
        self.exp.start(self._config, self._command, self._resume, self._overwrite)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        line = format_epoch_line(trainer.current_epoch + 1, trainer.max_epochs, metrics, now - self._epoch_start,
                                 self._elapsed_before + now - self._start, trainer.current_epoch + 1)
        bar = trainer.progress_bar_callback
        bar.print(line) if bar is not None and hasattr(bar, 'print') else print(line)
        self.exp.log(line)

    def state_dict(self) -> dict[str, Any]:
        return {'elapsed': self._elapsed_before + time.perf_counter() - self._start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._elapsed_before = state_dict.get('elapsed', 0.0)
