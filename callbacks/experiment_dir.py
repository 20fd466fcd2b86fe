"""The experiment folder `save/<name>/`: its name, creation, config.yaml, src/, git state,
log.txt and result.yaml.

Lightning-free: train.py uses it directly; callbacks/base_logger.py wraps it for train_pl.py.
"""
from __future__ import annotations

import datetime
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from configs.loading import dump_yaml, parse_yaml
from configs.references import escape_references
from utils import PROJECT_ROOT, ConfigError, display_path

_NAME_RULE = 'letters, digits, and . _ - = (no path separators, no "..")'


def check_experiment_name(name: str, flag: str = '--name') -> None:
    """An experiment name must stay one folder inside the save root."""
    if (not name or name in ('.', '..') or '..' in name or os.path.isabs(name)
            or re.search(r'[/\\]', name) or not re.fullmatch(r'[\w.\-=]+', name)):
        raise ConfigError(f'{flag} {name!r}: an experiment name may only use {_NAME_RULE}')

_SOURCE_SKIP_DIRS = {'save', 'load', '.git', '__pycache__', '.pytest_cache', '.hypothesis', 'venv', '.venv',
                     'env', '.tox', '.mypy_cache', '.ruff_cache', 'node_modules', 'lightning_logs'}


class ExperimentDir:
    """`save/<name>/`: config.yaml, src/, git.txt, git.diff, log.txt, metrics.csv, tb/, ckpt/,
    classes.yaml (when the training set names its classes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / 'ckpt'
        self.log_file = self.path / 'log.txt'
        self.started = False   # set by start(): trackers and TensorBoard wait for it (rank 0 only)

    @classmethod
    def for_name(cls, save_root: str | os.PathLike, name: str) -> 'ExperimentDir':
        """The folder for a validated experiment name under `save_root`."""
        check_experiment_name(name)
        return cls(Path(save_root) / name)

    def check_free(self, overwrite: bool) -> None:
        """Refuse a name in use, saying how to resume it or overwrite it explicitly."""
        if self.path.exists() and not overwrite:
            raise ConfigError(
                f'--name: experiment folder {display_path(self.path)} already exists; continue it with '
                f'--resume {display_path(self.path)}, choose another --name or --tag, or pass --overwrite '
                f'to move the old folder aside (nothing is deleted)')

    def create(self, config: Mapping, command: Sequence[str], overwrite: bool = False) -> Optional[Path]:
        """Make the folder and record config, source and git state. Returns where an old run was moved."""
        self.check_free(overwrite)
        moved = None
        if self.path.exists():
            stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
            moved = self.path.with_name(f'{self.path.name}.old-{stamp}')
            self.path.rename(moved)
        self.path.mkdir(parents=True)
        self.ckpt_dir.mkdir()
        self.write_config(config, command)
        self.copy_source()
        self.record_git()
        return moved

    def start(self, config: Mapping, command: Sequence[str], resume: bool, overwrite: bool = False) -> None:
        """Create the folder (or, on resume, record the new command in it) and log the command."""
        if resume:
            self.write_config(config, command)
            if not (self.ckpt_dir / 'last.ckpt').exists():   # stopped before its first checkpoint
                self._set_aside_partial_metrics()
                self.log(f'restarted from the start (no checkpoint was written): {" ".join(command)}')
            else:
                self.log(f'resumed: {" ".join(command)}')
        else:
            moved = self.create(config, command, overwrite=overwrite)
            if moved is not None:
                print(f'moved the old {display_path(self.path)} to {display_path(moved)}')
            self.log(f'command: {" ".join(command)}')
        self.started = True

    def _set_aside_partial_metrics(self) -> None:
        """A restarted run's metrics begin anew; the killed attempt's are kept beside them."""
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
        for name in ('metrics.csv', 'tb'):
            if (self.path / name).exists():
                (self.path / name).rename(self.path / f'{name}.killed-{stamp}')

    def write_config(self, config: Mapping, command: Sequence[str]) -> None:
        """config.yaml: the merged config with its references resolved (the values the run used),
        headed by every command that ran it (as comments, so the file still loads as a config)."""
        path = self.path / 'config.yaml'
        old = path.read_text().splitlines() if path.exists() else []
        header = [line for line in itertools.takewhile(lambda line: line.startswith('#'), old)]
        header.append(f'# {datetime.datetime.now().isoformat(timespec="seconds")}: {" ".join(command)}')
        atomic_write(path, '\n'.join(header) + '\n' + dump_yaml(escape_references(dict(config))))

    def copy_source(self, root: Path = PROJECT_ROOT) -> None:
        """Copy the project's Python files and configs into src/ (not data, runs, git or caches)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SOURCE_SKIP_DIRS and not d.startswith('.')
                           and not (Path(dirpath, d) / 'pyvenv.cfg').exists()
                           and Path(dirpath, d).resolve() != self.path.resolve().parent]
            for filename in filenames:
                if filename.endswith(('.py', '.yaml', '.yml', '.txt', '.md')):
                    source = Path(dirpath, filename)
                    target = self.path / 'src' / source.relative_to(root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)

    def record_git(self, root: Path = PROJECT_ROOT) -> None:
        """git.txt (commit and status) and git.diff (uncommitted changes), inside a git checkout."""
        def git(*args: str) -> Optional[str]:
            try:
                done = subprocess.run(['git', *args], cwd=root, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                return None
            return done.stdout if done.returncode == 0 else None
        commit = git('rev-parse', 'HEAD')
        if commit is None:
            return
        (self.path / 'git.txt').write_text(f'commit {commit.strip()}\n\n{git("status", "--short") or ""}')
        (self.path / 'git.diff').write_text(git('diff', 'HEAD') or '')

    def write_result(self, final: Mapping[str, float], monitor: Optional[str], best: Optional[float],
                     best_checkpoint: Optional[str]) -> None:
        """result.yaml: the last epoch's metrics and the best monitored value; it also marks the run
        as finished (a sweep skips finished runs and resumes the others)."""
        result = {'final': {k: float(v) for k, v in sorted(final.items())},
                  'best': {'monitor': monitor, 'value': None if best is None else float(best),
                           'checkpoint': best_checkpoint}}
        atomic_write(self.path / 'result.yaml', dump_yaml(result))

    def write_classes(self, classes: Optional[Sequence[str]]) -> None:
        """classes.yaml: the training set's class names in label order, for `--predict`'s
        predictions.csv (nothing if the dataset has none)."""
        if classes:
            atomic_write(self.path / 'classes.yaml', dump_yaml([str(c) for c in classes]))

    def read_classes(self) -> Optional[list[str]]:
        """The class names classes.yaml holds, or None."""
        path = self.path / 'classes.yaml'
        return parse_yaml(path.read_text(), display_path(path)) if path.is_file() else None

    def log(self, line: str) -> None:
        """Append one line to log.txt."""
        with open(self.log_file, 'a') as f:
            f.write(line.rstrip('\n') + '\n')


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
