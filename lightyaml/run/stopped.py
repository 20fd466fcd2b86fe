"""A run under way that stops on an error (a full disk, a dataset that raises): one line naming
the cause, the config key it comes from, the checkpoint kept and how to go on. Lightning-free."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from lightyaml.config.checking import blame, first_line
from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError, NonFiniteLossError, RunStoppedError, display_path
from lightyaml.run.disk_space import as_full_disk, full_disk_cause, is_torch_writer_failure
from lightyaml.run.experiment_dir import ExperimentDir, checkpoint_on_disk


@contextlib.contextmanager
def stopped_run(exp: ExperimentDir, cfg: Config) -> Iterator[None]:
    """An error that stops a run under way (a full disk, a dataset that raises) becomes one line,
    a RunStoppedError: the cause, the config key it comes from, the checkpoint kept, how to go on."""
    try:
        yield
    except (ConfigError, NonFiniteLossError, RunStoppedError):
        raise
    except Exception as e:
        raise RunStoppedError(stop_message(e, exp, cfg)) from e


def stop_message(error: Exception, exp: ExperimentDir, cfg: Config) -> str:
    """`run stopped: <cause>; the last good checkpoint ... is kept; continue with --resume ...`."""
    if is_torch_writer_failure(error):   # torch's writer, outside atomic_torch_save: the file is not known
        error = as_full_disk(error, exp.path)
        error.filename = None
    full_disk = full_disk_cause(error, exp.path) if isinstance(error, OSError) else None
    if full_disk:
        cause = full_disk
    elif isinstance(error, OSError) and error.errno is not None:
        where = f': {display_path(Path(os.fsdecode(error.filename)))}' if error.filename else ''
        cause = f'{error.strerror or error}{where} ({errno.errorcode.get(error.errno, error.errno)})'
    else:
        key = blame(error, cfg, '')
        cause = f"{f'{key}: ' if key else ''}{type(error).__name__}: {first_line(error)}"
    from lightyaml.run.checkpoint_files import read_checkpoint  # torch: only once a run stopped
    last = exp.ckpt_dir / 'last.ckpt'
    if checkpoint_on_disk(last) is not None:
        epoch = read_checkpoint(checkpoint_on_disk(last), str(last)).get('epoch', -1) + 1
        kept = (f'the last good checkpoint {display_path(last)} (epoch {epoch}) is kept; continue with '
                f'--resume {display_path(exp.path)} (--debug shows the traceback)')
    else:
        kept = 'no checkpoint was written' if exp.path.exists() else 'nothing was created'
    return f'run stopped: {cause}; {kept}'
