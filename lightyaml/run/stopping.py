"""SIGTERM, SIGINT and SIGHUP during training: the run stops at the next training batch, keeps
last.ckpt, writes one line (what stopped it, the command that resumes it) and exits with 128 + the
signal's number. In a SLURM job, SIGUSR1 (the warning before the time limit) also stops the run, and
the job is requeued, as Lightning's auto-requeue does, but at the next batch rather than in the
signal handler (Lightning's saves a checkpoint inside it, which deadlocks when the signal lands while
the process holds a lock the save needs). A requeue writes no checkpoint where last.ckpt is written
at every epoch's end: the requeued run trains the interrupted epoch again from its start, and ends
bit-identical to an uninterrupted run.
Lightning-free: train.py checks it per batch; callbacks/signal_stop.py for train_pl.py."""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

from lightyaml.config.secrets import mask_command
from lightyaml.errors import display_path
from lightyaml.run.experiment_dir import ExperimentDir

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Set by the array script of `--launcher slurm` (lightyaml/launch/slurm.py), which requeues its task itself.
REQUEUED_BY = 'LIGHTYAML_REQUEUED_BY'


def in_slurm_job(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether SIGUSR1 asks for a requeue: in a SLURM job, or in a task of slurm.sh run with bash."""
    return 'SLURM_JOB_ID' in environ or REQUEUED_BY in environ


class StoppedBySignal(SystemExit):
    """A run a signal stopped, its line written: exits with `code` (128 + the signal's number) and
    no traceback, and passes through the handlers that turn errors into one line."""


class StopSignals:
    """Records the first of SIGTERM, SIGINT and SIGHUP while installed; the training loop asks
    `signum` between batches and stops there. Later signals are ignored, so a second Ctrl-C during
    the checkpoint write changes nothing."""

    def __init__(self, requeue: bool = False) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self.requeue = requeue   # SIGUSR1 too (under SLURM): stop, then requeue the job; set before `installed`

    @property
    def _signals(self) -> tuple[int, ...]:
        return (*STOP_SIGNALS, signal.SIGUSR1) if self.requeue else STOP_SIGNALS

    def _record(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handlers for the three signals for the block (in the main thread: Python allows no
        other), the previous ones back after it; after a stop they are ignored instead, while the
        process exits with the first one's status (Python puts back the default, deadly, handlers
        of its own ones at exit, not SIG_IGN)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in self._signals}
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                restored = signal.SIG_IGN if self.signum is not None else handler
                signal.signal(signum, restored if restored is not None else signal.SIG_DFL)
            self._previous = {}

    def take_back(self) -> None:
        """Our handlers again in place of ones put in since `installed` (Lightning's at the start of
        `fit`: its SIGTERM handler runs a collective inside the handler, which hangs DDP)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                signal.signal(signum, self._record)

    @property
    def status(self) -> int:
        """The exit status of a run the signal stopped: 128 + its number (143 for SIGTERM)."""
        return 128 + int(self.signum or 0)

    def keeps_last_epoch(self, epoch_checkpoints: bool) -> bool:
        """Whether this stop leaves last.ckpt as the last epoch's end wrote it rather than writing
        it now: a requeue (SIGUSR1) does where last.ckpt is written every epoch (`epoch_checkpoints`),
        so that the requeued run, training the interrupted epoch again from its start, ends
        bit-identical to an uninterrupted one."""
        return self.signum == signal.SIGUSR1 and epoch_checkpoints

    def line(self, exp: ExperimentDir, command: Sequence[str], epoch: int, step: int, kept_epoch: bool = False) -> str:
        """`stopped by SIGTERM at epoch 3, step 120: last.ckpt kept; resume with: python train.py --resume save/x`
        (after SIGUSR1: `...: last.ckpt of epoch 2 kept, epoch 3 runs again; SLURM job 42 requeued; ...`)."""
        resume = shlex.join(mask_command([*command[:2], '--resume', display_path(exp.path)]))
        kept = 'last.ckpt kept'
        if kept_epoch:
            kept = (f'last.ckpt of epoch {epoch - 1} kept' if epoch > 1 else 'no epoch done yet') + \
                   f', epoch {epoch} runs again'
        requeued = f'{requeue_slurm_job()}; ' if self.signum == signal.SIGUSR1 else ''
        return (f'stopped by {signal.Signals(self.signum).name} at epoch {epoch}, step {step}: '
                f'{kept}; {requeued}resume with: {resume}')

    def stop(self, exp: ExperimentDir, command: Sequence[str], where: tuple[int, int], master: bool,
             kept_epoch: bool = False) -> StoppedBySignal:
        """Rank 0 writes the line to log.txt and stderr; every process gets the exception to raise."""
        if master:
            line = self.line(exp, command, *where, kept_epoch=kept_epoch)
            exp.log(line)
            print(line, file=sys.stderr, flush=True)
        return StoppedBySignal(self.status)


def requeue_slurm_job() -> str:
    """`scontrol requeue` this SLURM job (an array task as JOB_TASK), as Lightning's SIGUSR1 handler
    does, unless slurm.sh requeues it itself; what happened, for the stop line. The requeued job's
    command continues the folder."""
    array = os.environ.get('SLURM_ARRAY_JOB_ID')
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get('SLURM_JOB_ID')
    if os.environ.get(REQUEUED_BY):
        by = os.environ[REQUEUED_BY]
        return f'{by} requeues SLURM job {job}' if job else f'not a SLURM job: {by} requeues nothing'
    try:
        done = subprocess.run(['scontrol', 'requeue', job or '?'], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f'SLURM job {job} not requeued ({type(e).__name__}: {e})'
    if done.returncode:
        return f'SLURM job {job} not requeued (scontrol: {done.stderr.strip() or done.returncode})'
    return f'SLURM job {job} requeued'
