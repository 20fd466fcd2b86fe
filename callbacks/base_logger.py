"""BaseLogger (always on): the experiment folder and its per-epoch log.txt line.
ExperimentLogger: Lightning's logger interface over metrics.csv and TensorBoard events; its
`experiment` (`self.logger.experiment` in a LightningModule) is the tb/ SummaryWriter."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.metrics_files import MetricsWriter, format_epoch_line, model_summary


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
        self.exp, self._config, self._command = exp, dict(config), list(command)
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


class Deferred:
    """Stands for a logger's experiment until the experiment folder exists: Lightning asks every
    logger for its `experiment` before the callbacks' `setup`, which creates the folder."""

    def __init__(self, get: Callable[[], Any]) -> None:
        self._get = get

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


class ExperimentLogger(Logger):
    """Sends Lightning's logged metrics to the experiment's metrics.csv and TensorBoard (tb/)."""

    def __init__(self, exp: ExperimentDir) -> None:
        super().__init__()
        self.exp = exp
        self._writer: Optional[MetricsWriter] = None

    @property
    def name(self) -> str:
        return self.exp.path.name

    @property
    def version(self) -> str:
        return ''

    @property
    def log_dir(self) -> str:
        return str(self.exp.path)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """tb/'s tensorboardX SummaryWriter: `self.logger.experiment.add_image(...)`, `add_histogram`,
        `add_figure` from a LightningModule (a stand-in that does nothing on other ranks)."""
        if not self.exp.started:
            return Deferred(lambda: self.experiment)
        return self.writer.tensorboard

    @property
    def writer(self) -> MetricsWriter:
        if self._writer is None:
            self._writer = MetricsWriter(self.exp.path)
        return self._writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self.writer.log(metrics, step or 0)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the whole config is in config.yaml

    @rank_zero_only
    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
