"""An experiment folder read back: how its last attempt ended, its epochs, the best monitored
value and its epoch, the training time, when it started and the commands that ran it.

Everything comes from the files a run writes, never from a guess: the folder's lock (a process
holds it: running), the line that ends each attempt in log.txt (`done ...`, `stopped by SIGTERM
...`, `error: ...`), result.yaml, metrics.csv and config.yaml's header of commands. An attempt
whose process is gone without such a line was killed (SIGKILL, out of memory, a lost machine).
Nothing is written; a folder's lock is read from /proc/locks, and probed (taken and dropped at
once) only where the files say its last attempt has not ended. Lightning-free and torch-free:
`--runs` reads 200 folders in well under a second (bench/README.md).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from lightyaml.config.loading import parse_yaml
from lightyaml.errors import ConfigError
from lightyaml.run.folder_lock import is_locked, lock_key

# The states a run can be in, as --runs shows them: running, finished (pruned: a search's pruner
# ended it early), stopped by a signal, failed on an error, killed without a word; and folders
# that are not whole experiments.
STATES = ('running', 'finished', 'pruned', 'stopped', 'failed', 'killed', 'half-written', 'foreign')

_ATTEMPT_STARTS = ('command: ', 'resumed: ', 'restarted from the start')   # lightyaml/run/experiment_dir.py
# `epoch 3/30  train: ...  0.1s, 1s / ~9s` (lightyaml/run/metrics_files.py:format_epoch_line)
_EPOCH_LINE = re.compile(r'^epoch (\d+)(?:/(\d+))?  (?:.*  )?[\d.]+s, (\d+[hms][\dms]*)(?: / ~\S+)?$')
_HEADER_LINE = re.compile(r'^# (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d): (.*)$')   # config.yaml's commands
_DURATION = re.compile(r'^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$')


@dataclasses.dataclass
class RunState:
    """One experiment folder as its files tell it."""
    path: Path
    state: str                          # one of STATES
    note: str = ''                      # the evidence: the signal, the error line, the pid, what is missing
    epochs: int = 0                     # epochs done (the last epoch line of log.txt)
    planned: Optional[int] = None       # trainer_params.max_epochs as the last attempt ran it
    monitor: Optional[str] = None       # checkpoint.monitor
    mode: Optional[str] = None          # checkpoint.mode; None until read (see `checkpoint_mode`)
    best: Optional[float] = None        # the best monitored value (result.yaml's, else metrics.csv's)
    best_epoch: Optional[int] = None    # the epoch it was reached in, from 1 as log.txt counts
    elapsed: Optional[float] = None     # seconds of training over every attempt (the last epoch line)
    started: Optional[str] = None       # when the first command ran (ISO, from config.yaml's header)
    commands: list[str] = dataclasses.field(default_factory=list)   # config.yaml's header, oldest first

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: Path, locks: Optional[Mapping[str, int]] = None) -> RunState:
    """The state of the experiment folder `path` (it holds config.yaml). `locks` is folder_lock's
    `held_locks()`, read once for many folders; a folder it does not list is probed only when its
    files say its last attempt has not ended (a run on another machine of a shared file system)."""
    run = RunState(path, 'foreign')
    config_text = _read_text(path / 'config.yaml')
    for line in config_text.splitlines():
        match = _HEADER_LINE.match(line)
        if not line.startswith('#'):
            break
        if match:
            run.started = run.started or match[1]
            run.commands.append(match[2])
    log = _read_text(path / 'log.txt').splitlines()
    end = _read_log(run, log)
    result = _read_result(path / 'result.yaml', ('best',))
    _read_checkpoint_settings(run, config_text, result)
    _set_state(run, log, end, locks)
    if run.monitor:
        _find_best(run, result)
    return run


def _read_text(path: Path) -> str:
    """A file's text, or '' when it is missing or unreadable (what is missing decides the state)."""
    try:
        return path.read_text(errors='replace')
    except OSError:
        return ''


def _read_log(run: RunState, log: list[str]) -> Optional[str]:
    """Epochs, planned epochs and training time from the last epoch line; returns the line that
    ended the last attempt (`done ...`, `stopped by ...`, `error: ...`), or None."""
    end = None
    for line in log:
        if line.startswith(_ATTEMPT_STARTS):
            end = None
        elif line.startswith(('done', 'stopped by ', 'error: ')) and end is None:
            end = line
        match = _EPOCH_LINE.match(line)
        if match:
            run.epochs = int(match[1])
            run.planned = int(match[2]) if match[2] else run.planned
            run.elapsed = duration_seconds(match[3])
    return end


def _read_result(path: Path, sections: Optional[tuple[str, ...]] = None) -> Optional[dict]:
    """result.yaml (only its `sections` when given), or None when the run has none; {} when it
    cannot be read (then the log and metrics.csv decide)."""
    if not path.is_file():
        return None
    text = _read_text(path)
    if sections is not None:
        return yaml_sections(text, sections, str(path))
    try:
        result = parse_yaml(text, str(path))
    except ConfigError:
        return {}
    return result if isinstance(result, dict) else {}


def _read_checkpoint_settings(run: RunState, config_text: str, result: Optional[dict]) -> None:
    """checkpoint.monitor and mode, and trainer_params.max_epochs when no epoch line gave it,
    from config.yaml (result.yaml's monitor when there is one)."""
    best = (result or {}).get('best') if isinstance((result or {}).get('best'), dict) else {}
    if 'monitor' in best and run.planned is not None:   # a finished run: config.yaml is read only if need be
        run.monitor = best['monitor']
        return
    sections = yaml_sections(config_text, ('checkpoint', 'trainer_params'), 'config.yaml')
    checkpoint = sections.get('checkpoint') if isinstance(sections.get('checkpoint'), dict) else {}
    run.monitor = best.get('monitor', checkpoint.get('monitor'))
    run.mode = 'max' if checkpoint.get('mode') == 'max' else 'min'
    trainer = sections.get('trainer_params') if isinstance(sections.get('trainer_params'), dict) else {}
    if run.planned is None and isinstance(trainer.get('max_epochs'), int):
        run.planned = trainer['max_epochs']


def checkpoint_mode(run: RunState) -> str:
    """checkpoint.mode of the run ('min' or 'max', ModelCheckpoint's default 'min'), read once."""
    if run.mode is None:
        sections = yaml_sections(_read_text(run.path / 'config.yaml'), ('checkpoint',), 'config.yaml')
        checkpoint = sections.get('checkpoint')
        run.mode = 'max' if isinstance(checkpoint, dict) and checkpoint.get('mode') == 'max' else 'min'
    return run.mode


def yaml_sections(text: str, names: tuple[str, ...], where: str) -> dict:
    """The top-level sections `names` of a config.yaml or result.yaml, read alone: both are
    written with each top-level key at the start of a line, and reading a few small sections
    instead of the whole file is what keeps --runs fast (pure-Python YAML reads about 1 MB/s). A
    file written otherwise is read whole; an unreadable one gives {}."""
    kept, keep = [], False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith('#'):
            keep = line.split(':', 1)[0].strip('\'"') in names
        if keep:
            kept.append(line)
    for source in ('\n'.join(kept), text):
        try:
            data = parse_yaml(source, where)
        except ConfigError:
            continue
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in names}
    return {}


def _set_state(run: RunState, log: list[str], end: Optional[str], locks: Optional[Mapping[str, int]]) -> None:
    """The state from the line that ended the last attempt; without one, a process holding the
    lock means running, and no holder means killed (or half made, when it never logged a command)."""
    if end is not None and end.startswith('done'):
        run.state = 'pruned' if (run.path / 'pruned.yaml').is_file() else 'finished'
        return
    if end is not None:
        run.state = 'stopped' if end.startswith('stopped by ') else 'failed'
        run.note = end
        return
    pid = holder(run.path, locks)
    if pid is not None:
        run.state, run.note = 'running', (f'pid {pid}' if pid > 0 else 'its lock is held')
    elif not (run.path / 'log.txt').is_file():
        run.state, run.note = 'half-written', 'no log.txt: stopped while its folder was being made, or not a run'
    elif not any(line.startswith(_ATTEMPT_STARTS) for line in log):
        run.state, run.note = 'foreign', 'log.txt has no command line: not a lightyaml run'
    else:
        run.note = 'ended without a line in log.txt and holds no lock (SIGKILL, out of memory, a lost machine)'
        run.state = 'killed'


def holder(path: Path, locks: Optional[Mapping[str, int]]) -> Optional[int]:
    """The pid of the process writing the folder (0 when a lock is held by an unknown process),
    or None when none is."""
    try:
        pid = locks.get(lock_key(path)) if locks is not None else None
    except OSError:
        return None
    if pid is not None:
        return pid
    busy = is_locked(path)   # takes and drops the lock at once: only for folders not known to have ended
    return None if busy is None else (busy.pid or 0)


def _find_best(run: RunState, result: Optional[dict]) -> None:
    """The best monitored value (result.yaml's for a finished run, else the best in metrics.csv in
    the checkpoint's mode) and the first epoch that reached it, as ModelCheckpoint keeps the first."""
    curve = [(e, v) for e, v in metric_curve(run.path / 'metrics.csv', run.monitor) if math.isfinite(v)]
    best = ((result or {}).get('best') or {}).get('value') if result else None
    if isinstance(best, (int, float)) and not isinstance(best, bool):
        run.best = float(best)
    elif curve:
        run.best = (max if checkpoint_mode(run) == 'max' else min)(v for _, v in curve)
    run.best_epoch = epoch_of(curve, run.best)


def epoch_of(curve: list[tuple[int, float]], value: Optional[float]) -> Optional[int]:
    """The first epoch (from 1) of a metric_curve whose value is `value` (to float32 rounding:
    a checkpoint's score and metrics.csv's value are one number written twice), or None."""
    if value is None or not curve:
        return None
    epoch, nearest = min(curve, key=lambda p: (abs(p[1] - value), p[0]))
    return epoch + 1 if math.isclose(nearest, value, rel_tol=1e-6, abs_tol=1e-12) else None


def metric_curve(path: Path, metric: Optional[str]) -> list[tuple[int, float]]:
    """[(epoch from 0, value), ...] of one column of metrics.csv, the last value of each epoch;
    [] when the file or the column is missing. Reads only that column (a long run has many rows)."""
    try:
        with open(path, newline='') as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if metric not in header or 'epoch' not in header:
                return []
            column, epoch = header.index(metric), header.index('epoch')
            values: dict[int, float] = {}
            for row in reader:
                if len(row) > max(column, epoch) and row[column] and row[epoch]:
                    try:
                        values[int(row[epoch])] = float(row[column])
                    except ValueError:   # a hand-edited or half-written row
                        continue
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    return sorted(values.items())


def final_metrics(run: RunState) -> dict[str, float]:
    """The last epoch's value of every logged metric: result.yaml's `final` for a finished run,
    else the last value of each epoch-level column of metrics.csv."""
    result = _read_result(run.path / 'result.yaml') if run.state in ('finished', 'pruned') else None
    final = (result or {}).get('final')
    if isinstance(final, dict):   # train.py's holds its epoch and step counters too; step values are no epoch's
        return {str(k): float(v) for k, v in final.items()
                if isinstance(v, (int, float)) and k not in ('epoch', 'step') and not str(k).endswith('_step')}
    last: dict[str, float] = {}
    try:
        with open(run.path / 'metrics.csv', newline='') as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key and value and key not in ('epoch', 'step') and not key.endswith('_step'):
                        last[key] = _as_float(value)
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return dict(sorted(last.items()))


def _as_float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def duration_seconds(text: str) -> Optional[float]:
    """'3m05s' -> 185.0: format_duration's text back as seconds (None for anything else)."""
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        return None
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)
