"""The engine's Lightning side, for train_pl.py only (train.py never imports it):

- AtomicCheckpointIO: Lightning's checkpoint writer, with the temporary file beside its destination.
  Lightning's own TorchCheckpointIO writes through an fsspec transaction whose temporary file is
  made in $TMPDIR and then moved; when $TMPDIR is on another file system (a node-local /tmp) the
  move is a copy, and a kill during it leaves half a `last.ckpt`. Here the file is written as
  `<dest>.tmp` in the destination folder and renamed over it, which is atomic on one file system.
- ExperimentLogger: Lightning's logger interface over metrics.csv and TensorBoard events; its
  `experiment` (`self.logger.experiment` in a LightningModule) is the tb/ SummaryWriter.
- lightning_data: a plain data module behind Lightning's hooks.
- lightning_first_steps: the preflight through a throwaway Trainer (lightyaml/train/preflight.py
  has train.py's and the checks both share).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from lightyaml.config.checking import attempt
from lightyaml.config.loading import Config
from lightyaml.errors import NonFiniteLossError
from lightyaml.run.checkpoint_files import atomic_torch_save, loadable_hyperparameters
from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.metrics_files import MetricsWriter
from lightyaml.train.optim import UnloggedMonitor
from lightyaml.train.preflight import FirstSteps, check_monitors, copy_module, isolated_rng


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose writes are a kill-safe `<dest>.tmp` + rename in the destination folder,
    with hyperparameters a `weights_only` load reads back."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f'{type(self).__name__} takes no storage_options')
        hparams = {key: loadable_hyperparameters(checkpoint[key])   # a module's `net`, `optimizer`: their specs
                   for key in ('hyper_parameters', 'datamodule_hyper_parameters') if key in checkpoint}
        atomic_torch_save({**checkpoint, **hparams}, Path(path))


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


def lightning_data(data: Any) -> Any:
    """A LightningDataModule as it is; a plain data module behind Lightning's hooks, so that each
    DDP process makes its loaders (and its share of the data) after the process group is up."""
    if isinstance(data, pl.LightningDataModule):
        return data

    class PlainDataModule(pl.LightningDataModule):
        val_names = getattr(data, 'val_names', None)   # the base wrapper's names of several val sets

        @property
        def batch_size(self) -> int:   # the plain module's own, which its loaders use (--find-batch-size sets it)
            return data.batch_size

        @batch_size.setter
        def batch_size(self, value: int) -> None:
            data.batch_size = value

        def train_dataloader(self) -> Any:
            return data.train_dataloader()

        def val_dataloader(self) -> Any:
            return data.val_dataloader() or []

        def test_dataloader(self) -> Any:
            return data.test_dataloader() or []

        def predict_dataloader(self) -> Any:
            return data.predict_dataloader() or []

    return PlainDataModule()


# ------------------------------------------------------------------------------------ the preflight

# The Trainer arguments a preflight step keeps: how a step computes. The loop's own (epochs,
# limits, devices, strategy) are the preflight's.
PREFLIGHT_KEEPS = ('accelerator', 'precision', 'deterministic', 'benchmark', 'inference_mode', 'detect_anomaly',
                   'gradient_clip_val', 'gradient_clip_algorithm', 'log_every_n_steps', 'use_distributed_sampler')


class PreflightPhases(pl.Callback):
    """Where the preflight is, in train.py's words, for the message of an error; sees the first batch."""

    def __init__(self, seen: FirstSteps, scratch: ExperimentDir) -> None:
        self.seen, self.scratch = seen, scratch
        self.phase = 'building the optimizer and scheduler'

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.phase = 'loading the first training batch'
        self.scratch.started = True   # after Lightning's setup asked for `experiment`: made only when used

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.see_batch(batch)
        self.phase = 'the first training step'

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.phase = 'loading the first validation batch'

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.phase = 'the first validation step'

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.phase = 'stepping the scheduler'

    def watch_scheduler(self, module: pl.LightningModule) -> None:
        """Lightning steps the scheduler between two callback hooks: name that phase too."""
        step_scheduler = module.lr_scheduler_step

        def lr_scheduler_step(*args: Any) -> None:
            self.phase = 'stepping the scheduler'
            step_scheduler(*args)
            self.phase = 'the first training step'
        module.lr_scheduler_step = lr_scheduler_step


class ScratchLogger(ExperimentLogger):
    """Writes only what the module itself asks for (images, samples), in a temporary folder."""

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        pass


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's own info lines hidden: the run itself says what matters, once."""
    loggers = [logging.getLogger(n) for n in ('pytorch_lightning', 'lightning_fabric', 'lightning.pytorch')]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def lightning_first_steps(cfg: Config, data: Any, wrapper: pl.LightningModule, params: Mapping) -> FirstSteps:
    """One training and one validation batch of a copy of the wrapper through a throwaway Trainer
    (its logger and root in a temporary folder, no checkpoints, no callbacks of the run, one
    device), then every `monitor` checked against what was logged. Any wrapper works, since
    Lightning itself runs its hooks; a LightningDataModule gets prepare_data() and setup('fit')
    from it. The generators are restored afterwards. About 0.1 s on digits."""
    seen = FirstSteps()
    with isolated_rng(), warnings.catch_warnings(), quiet_lightning(), tempfile.TemporaryDirectory() as root:
        warnings.simplefilter('ignore')   # the run itself warns about what matters, once
        copy = copy_module(wrapper)
        seen.watch(copy)
        phases = PreflightPhases(seen, ExperimentDir(root))   # the module's own logging goes to `root`
        phases.watch_scheduler(copy)
        trainer = pl.Trainer(**{k: v for k, v in params.items() if k in PREFLIGHT_KEEPS}, devices=1, max_epochs=1,
                             limit_train_batches=1, limit_val_batches=0 if params.get('limit_val_batches') == 0 else 1,
                             num_sanity_val_steps=0, callbacks=[phases], logger=ScratchLogger(phases.scratch),
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=root)

        def fit() -> None:
            # A monitor is reported below with its config key; a NaN loss by the run itself.
            try:
                trainer.fit(copy, datamodule=lightning_data(data))
            except UnloggedMonitor:
                pass
            except NonFiniteLossError:
                phases.phase = 'non-finite'
        attempt(lambda: phases.phase, 'train_wrapper', cfg, fit,
                lambda: seen.detail() if phases.phase.startswith('the first') else '', seen.sizes)
    seen.logged = sorted(set(trainer.callback_metrics) - {'epoch', 'step'})
    if phases.phase != 'non-finite':   # the epoch stopped early: not everything was logged
        check_monitors(cfg, trainer.callback_metrics)
    return seen
