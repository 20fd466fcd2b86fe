"""SignalStop (always on): SIGTERM, SIGINT or SIGHUP stops the run at the next training batch with
last.ckpt kept, one line, and exit status 128 + the signal (lightyaml/run/stopping.py); in a SLURM
job SIGUSR1 does too, and the job is requeued (to continue from the last epoch's last.ckpt)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from callbacks.last_checkpoint import LastCheckpoint
from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.stopping import StoppedBySignal, StopSignals, in_slurm_job


class SignalStop(pl.Callback):
    """Stops at the end of the training batch a signal came in, as Lightning's own SIGTERM
    handling does: by raising its SIGTERMException, which every process raises at the same batch
    (rank 0 decides). Lightning's SIGTERM handler, put in at the start of `fit`, gives way to
    `stop`'s again (it broadcasts inside the handler, which hangs DDP). SLURM's SIGUSR1 is `stop`'s
    too where Lightning would requeue (`slurm_requeues`): installed before `fit`, it keeps Lightning's
    out (whose handler saves a checkpoint inside the signal handler and can deadlock). On the way
    out, every process writes last.ckpt together (Lightning's writer: atomic) and rank 0 the line."""

    def __init__(self, stop: StopSignals, exp: ExperimentDir, command: Sequence[str]) -> None:
        self._stop, self._exp, self._command = stop, exp, tuple(command)
        self.stopped: Optional[StoppedBySignal] = None   # what train_pl.py raises once `fit` is out

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop.take_back()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop.take_back()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        signalled = trainer.is_global_zero and self._stop.signum is not None
        if trainer.strategy.reduce_boolean_decision(signalled, all=False):
            raise SIGTERMException

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.stopped is not None:
            return
        self._stop.signum = trainer.strategy.broadcast(self._stop.signum, src=0)   # rank 0's signal
        if self._stop.signum is None:   # Lightning's own SIGTERM, without our handlers: as Lightning does
            return
        kept_epoch = self._stop.keeps_last_epoch(any(isinstance(c, LastCheckpoint) for c in trainer.callbacks))
        if not kept_epoch:   # a requeue continues from the last epoch's last.ckpt, exactly
            trainer.save_checkpoint(Path(self._exp.ckpt_dir) / 'last.ckpt', weights_only=False)   # all of it
        self.stopped = self._stop.stop(self._exp, self._command, (trainer.current_epoch + 1, trainer.global_step),
                                       trainer.is_global_zero, kept_epoch)


def slurm_requeues(trainer: pl.Trainer) -> bool:
    """Whether SIGUSR1 requeues this job: where Lightning would (a SLURM environment that keeps
    `auto_requeue` on; a `SLURMEnvironment(auto_requeue=False)` plugin turns it off), and in any other
    SLURM job (one task of a batch script, which Lightning does not take for SLURM), as in train.py."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment):
        return environment.auto_requeue
    return in_slurm_job()
