"""What the console shows, the same for both entry points. Lightning-free.

By default, no advertisements (Lightning's "💡 Tip: ..." lines), no deprecation warnings raised
inside the libraries (they are about the libraries' own code, which you cannot change) and no hint to
prepend `srun` where it does not apply (outside a SLURM job or in a one-node job); `--verbose` shows
them all, and `python -W ...` or PYTHONWARNINGS settings are left alone. Progress bars are drawn
only on a terminal: with output going to a file or a pipe, a run prints one line per epoch
(`trainer_params.enable_progress_bar: true` draws the bar anyway).

Nor Lightning's lines that say nothing to a CPU or single-GPU user (`GPU available: False, used:
False`, `` `Trainer.fit` stopped: `max_epochs=30` reached.``); `--verbose` shows them too.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import IO, Any, Optional

# Where the warnings to hide come from (matched against the warning's module) and what they are.
THIRD_PARTY = (r'(torch|torchvision|torchmetrics|pytorch_lightning|lightning_fabric|lightning_utilities|tensorboardX|'
               r'matplotlib|sklearn|scipy|numpy)(\.|$)')
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Lightning's hint, at every Trainer, wherever SLURM's tools are installed (any login node) and a run
# has no SLURM tasks; it matters only in a job of several nodes, which only srun fills.
SRUN_HINT = r'The `srun` command is available on your system but is not used'
# The loggers Lightning's rank_zero_info writes its tips to.
LIGHTNING_INFO_LOGGERS = ('pytorch_lightning.utilities.rank_zero', 'lightning_fabric.utilities.rank_zero')


class NoAdvertisements(logging.Filter):
    """Drops log records that advertise a product ("💡 Tip: For seamless cloud uploads ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r'\W*Tip:', record.getMessage())


_NO_ADVERTISEMENTS = NoAdvertisements()

# Lightning's lines that say nothing to a CPU or single-GPU user: every run ends with its own
# `done: ...` line instead (lightyaml/run/results.py). `--verbose` shows them.
NOTHING_TO_SAY = re.compile(r'(GPU|TPU|HPU) available: |`Trainer\.\w+` stopped: |'
                            r'LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: \[\d+\]$')
LIGHTNING_DEVICE_LOGGERS = ('pytorch_lightning.accelerators.cuda',)   # where the LOCAL_RANK line comes from


class NothingToSay(logging.Filter):
    """Drops Lightning's device and stopping lines (`GPU available: False, used: False`, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not NOTHING_TO_SAY.match(record.getMessage())


_NOTHING_TO_SAY = NothingToSay()


def quiet_console(verbose: bool = False) -> None:
    """Hide third-party tips and deprecation warnings, or with `verbose` show them again.
    Call it before Lightning is imported or used; the loggers need not exist yet."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        (logger.removeFilter if verbose else logger.addFilter)(_NO_ADVERTISEMENTS)
    for name in (*LIGHTNING_INFO_LOGGERS, *LIGHTNING_DEVICE_LOGGERS):
        logger = logging.getLogger(name)
        (logger.removeFilter if verbose else logger.addFilter)(_NOTHING_TO_SAY)
    if sys.warnoptions:   # the user chose what warnings to see
        return
    for category in DEPRECATIONS:
        warnings.filterwarnings('default' if verbose else 'ignore', category=category, module=THIRD_PARTY)
    several_nodes = int(os.environ.get('SLURM_JOB_NUM_NODES') or 1) > 1
    warnings.filterwarnings('default' if verbose or several_nodes else 'ignore', message=SRUN_HINT)


def progress_bar_wanted(setting: Optional[bool], stream: IO[Any]) -> bool:
    """An explicit `enable_progress_bar` decides; by default a bar only when `stream`, where the
    bar draws, is a terminal (in a file or a pipe every redraw would be a line)."""
    if setting is not None:
        return bool(setting)
    isatty = getattr(stream, 'isatty', None)
    return bool(isatty is not None and isatty())


class ReaderGone:
    """sys.stdout or sys.stderr for a run: once the reader is gone (a pipe into `head` closed, a
    terminal that went away), what is written is dropped instead of raising, so training goes on
    and log.txt stays complete. The stream's descriptor is pointed at /dev/null then, so writes
    below Python (and the flush at exit) are dropped too."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError:   # EPIPE, EIO: nobody reads this stream any more
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError:
                self._drop()

    def _drop(self) -> None:
        self.gone = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):   # no descriptor (a test's captured stream)
            pass

    def __getattr__(self, name: str) -> Any:   # isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)


def survive_closed_consoles() -> None:
    """Wrap sys.stdout and sys.stderr in ReaderGone (once); call it first thing in an entry point."""
    for name in ('stdout', 'stderr'):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderGone):
            setattr(sys, name, ReaderGone(stream))


_WRITING = threading.Lock()


def say(line: str, target: Optional[IO[str]] = None) -> None:
    """Write one whole line (to stdout by default) in one write: print() writes the text and the
    newline apart, so two threads of a sweep or search could print `sweep: asweep: b` and two newlines."""
    target = target or sys.stdout
    with _WRITING:
        target.write(line + '\n')
        target.flush()


def run_process(command: Sequence[str], env: Mapping[str, str], label: Optional[str] = None) -> int:
    """Run `command` (a sweep's run) and return its exit status. With a `label`, each line it prints
    comes out prefixed `[label] ` (stdout to stdout, stderr to stderr), so that the lines of runs
    going at once say whose they are; without, it writes to this console itself (bars included)."""
    if label is None:
        return subprocess.run(command, env=env).returncode
    # Unbuffered: through a pipe Python would hold the run's lines until its buffer fills.
    process = subprocess.Popen(command, env={**env, 'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors='replace')

    def relay(source: IO[str], target: IO[str]) -> None:
        for line in source:
            say(f'[{label}] ' + line.rstrip('\n'), target)
    relays = [threading.Thread(target=relay, args=pair, daemon=True)
              for pair in ((process.stdout, sys.stdout), (process.stderr, sys.stderr))]
    for thread in relays:
        thread.start()
    code = process.wait()
    for thread in relays:
        thread.join()
    return code
