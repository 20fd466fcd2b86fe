"""The `loggers` section under Lightning: each configured logger (any `pytorch_lightning.loggers`
class, or one registered with `callbacks.register_logger`) behind a TrackedRun, so that it starts
once the experiment folder exists, on global rank 0 only, continues its run on resume, and fails
with one warning instead of ending the training."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Optional

from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers.logger import DummyExperiment, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.trackers import TrackedRun, make_tracked_runs
from lightyaml.train.lightning import Deferred
from utils import LOGGERS


class TrackerLogger(Logger):
    """A configured logger behind its TrackedRun: the merged config goes to it once (Lightning's
    `log_hyperparams` is not passed on), everything else is passed on, guarded."""

    def __init__(self, run: TrackedRun) -> None:
        super().__init__()
        self.run = run

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def version(self) -> str:
        return ''

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The wrapped logger's own `experiment` (an MlflowClient, a wandb Run, ...); once the
        tracker has failed, a stand-in whose methods do nothing, so user code goes on too."""
        if not self.run.exp.started:
            return Deferred(lambda: self.experiment)
        logger = self.run.started()
        return DummyExperiment() if logger is None else logger.experiment

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.run.started()   # starting the run logs the merged config, which holds these

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self.run.call('log_metrics', metrics, step)

    @rank_zero_only
    def save(self) -> None:
        self.run.call('save')

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if rank_zero_only.rank == 0:
            self.run.call('after_save_checkpoint', checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.run.finish(status)
        wandb = sys.modules.get('wandb')
        if self.run.name == 'WandbLogger' and wandb is not None and wandb.run is not None:
            # Lightning leaves the W&B run open until the process exits; the next run here must not reuse it.
            self.run.guard.call(wandb.run.finish, exit_code=0 if status == 'success' else 1)


def make_loggers(cfg: Mapping, exp: ExperimentDir, resume: bool) -> list[TrackerLogger]:
    """The config's `loggers`, each behind a TrackerLogger."""
    return [TrackerLogger(run) for run in make_tracked_runs(cfg.get('loggers') or [], LOGGERS.get, exp, cfg, resume)]
