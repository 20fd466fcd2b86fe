"""What the console shows, the same for both entry points. Lightning-free.

By default, no advertisements (Lightning's "💡 Tip: ..." lines), no deprecation warnings raised
inside the libraries (they are about the libraries' own code, which you cannot change) and no hint to
prepend `srun` where it does not apply (outside a SLURM job or in a one-node job); `--verbose` shows
them all, and `python -W ...` or PYTHONWARNINGS settings are left alone. Progress bars are drawn
only on a terminal: with output going to a file or a pipe, a run prints one line per epoch
(`trainer_params.enable_progress_bar: true` draws the bar anyway).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings
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


def quiet_console(verbose: bool = False) -> None:
    """Hide third-party tips and deprecation warnings, or with `verbose` show them again.
    Call it before Lightning is imported or used; the loggers need not exist yet."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        (logger.removeFilter if verbose else logger.addFilter)(_NO_ADVERTISEMENTS)
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
