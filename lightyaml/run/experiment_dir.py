"""The experiment folder `save/<name>/`: its name, creation, its one writer (a lock held for the
whole run by global rank 0), config.yaml, src/, git state, log.txt and result.yaml.

Lightning-free: train.py uses it directly; callbacks/base_logger.py wraps it for train_pl.py.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional

from lightyaml.config.loading import dump_yaml, parse_yaml
from lightyaml.config.references import escape_references
from lightyaml.config.secrets import mask_command, mask_secrets, mask_text
from lightyaml.errors import PROJECT_ROOT, ConfigError, NonFiniteLossError, RunStoppedError, display_path
from lightyaml.process import global_rank_from_env
from lightyaml.run import source_copy
from lightyaml.run.disk_space import full_disk_cause
from lightyaml.run.folder_lock import FolderBusy, is_locked, lock_folder, unlock_folder

_NAME_RULE = 'letters, digits, and . _ - = (no path separators, no "..")'
# A folder name may have 255 bytes; `<name>.old-YYYYmmdd-HHMMSS` (--overwrite) must fit too.
MAX_NAME_BYTES = 200


def check_experiment_name(name: str, flag: str = '--name') -> None:
    """An experiment name must stay one folder inside the save root."""
    if (not name or name in ('.', '..') or '..' in name or os.path.isabs(name)
            or re.search(r'[/\\]', name) or not re.fullmatch(r'[\w.\-=]+', name)):
        raise ConfigError(f'{flag} {name!r}: an experiment name may only use {_NAME_RULE}')
    if name.startswith('-'):   # `--resume -x`, `ls save/-x`, `rm save/-x*` would read it as a flag
        raise ConfigError(f"{flag} {name!r}: an experiment name may not start with '-' (it reads as a flag); "
                          f"e.g. {flag} {name.lstrip('-') or 'run'}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f'{flag} {name[:40]}...: an experiment name may have at most {MAX_NAME_BYTES} '
                          f'characters, not {len(name.encode())}')


def is_experiment_folder(path: Path) -> bool:
    """A folder a run made: it has config.yaml and a log or checkpoints."""
    return (path / 'config.yaml').is_file() and ((path / 'log.txt').is_file() or (path / 'ckpt').is_dir())


SHARDS_META = 'meta.pt'   # beside the shards of a checkpoint folder (torch.distributed.checkpoint, Lightning's FSDP)


def checkpoint_on_disk(path: Path) -> Optional[Path]:
    """`path` if it is a checkpoint (a file, or a folder of shards with its meta.pt), else its `.old`
    twin where that is one (a sharded save killed between its two renames), else None."""
    for candidate in (path, path.with_name(path.name + '.old')):
        if candidate.is_file() or (candidate / SHARDS_META).is_file():
            return candidate
    return None


def os_error(path: Path, e: OSError, doing: str = 'writing the experiment folder') -> ConfigError:
    """A file-system error as one line naming the path (a full disk: the file system and its space left)."""
    full_disk = full_disk_cause(e, path)
    if full_disk:
        return ConfigError(f'{full_disk} ({doing})')
    return ConfigError(f'{display_path(Path(e.filename) if e.filename else path)}: {e.strerror or e} ({doing})')


def check_output_file(out: str | os.PathLike, flag: str, own: Path, parent_must_exist: bool = True) -> Path:
    """Where --predict/--plot/--export --out may write: never over one of an experiment's files
    (config.yaml, log.txt, a checkpoint...) other than the command's own output `own` (a file, or
    a folder of them); a new file at the top of an experiment folder is fine."""
    path = Path(out)
    resolved = path.resolve()
    if path.is_dir():
        raise ConfigError(f'{flag} --out {out}: is a folder; give a file name')
    if parent_must_exist and not resolved.parent.is_dir():
        raise ConfigError(f'{flag} --out {out}: the folder {display_path(resolved.parent)} does not exist')
    own = own.resolve()
    for folder in resolved.parents:
        if is_experiment_folder(folder):
            allowed = (resolved == own or own in resolved.parents
                       or (resolved.parent == folder and not os.path.lexists(resolved)))
            if not allowed:
                raise ConfigError(f'{flag} --out {out}: would replace a file of the experiment '
                                  f'{display_path(folder)}; write somewhere else')
    return path


class ExperimentDir:
    """`save/<name>/`: config.yaml, src/, git.txt, git.diff, log.txt, metrics.csv, tb/, ckpt/,
    classes.yaml (when the training set names its classes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / 'ckpt'
        self.log_file = self.path / 'log.txt'
        self.started = False   # set by start(): trackers and TensorBoard wait for it (rank 0 only)
        self._lock: Optional[int] = None   # the descriptor holding the folder's lock, while we write
        self._source_skipped: Optional[str] = None   # logged after the command line by start()

    def lock(self, flag: str, new: bool = False) -> None:
        """Become the folder's one writer until `release` (or the end of the process); refused
        while another run writes it. Nothing in the folder is created or changed."""
        if self._lock is None:
            try:
                self._lock = lock_folder(self.path, new)
            except FolderBusy as busy:
                raise self._busy(flag, busy) from None
            except OSError as e:
                raise os_error(self.path, e) from None

    def release(self) -> None:
        """Let another run write the folder."""
        unlock_folder(self._lock)
        self._lock = None

    @property
    def locked(self) -> bool:
        """Whether this process holds the folder's lock."""
        return self._lock is not None

    def _busy(self, flag: str, busy: FolderBusy) -> ConfigError:
        return ConfigError(f'{flag}: {display_path(self.path)} is being written by another run ({busy}); '
                           f'wait for it to end, or choose another --name')

    @classmethod
    def for_name(cls, save_root: str | os.PathLike, name: str) -> ExperimentDir:
        """The folder for a validated experiment name under `save_root`."""
        check_experiment_name(name)
        return cls(Path(save_root) / name)

    def check_free(self, overwrite: bool) -> None:
        """Refuse a name in use (saying how to resume it or overwrite it explicitly), a folder
        another run writes, a dangling link, and a save root where no folder can be made."""
        shown = display_path(self.path)
        if not os.path.lexists(self.path):
            self.check_creatable()
            return
        if not self.path.exists():
            raise ConfigError(f'--name: {shown} is a symbolic link to {os.readlink(self.path)}, which does not '
                              f'exist; remove the link or choose another --name')
        busy = is_locked(self.path) if self.path.is_dir() and not self.locked else None
        if busy:
            raise self._busy('--overwrite' if overwrite else '--name', busy)
        if not overwrite:
            raise ConfigError(
                f'--name: experiment folder {shown} already exists; continue it with '
                f'--resume {shown}, choose another --name or --tag, or pass --overwrite '
                f'to move the old folder aside (nothing is deleted)')

    def check_creatable(self) -> None:
        """The save root is (or can become) a writable folder: one line naming the path if not."""
        existing = next(p for p in [self.path.parent, *self.path.parent.parents] if os.path.lexists(p))
        if not existing.exists():
            raise ConfigError(f'--save-root: {display_path(existing)} is a symbolic link to '
                              f'{os.readlink(existing)}, which does not exist')
        if not existing.is_dir():
            raise ConfigError(f'--save-root: {display_path(existing)} is a file, not a folder')
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f'--save-root: {display_path(existing)} is not writable')

    def create(self, config: Mapping, command: Sequence[str], overwrite: bool = False) -> Optional[Path]:
        """Make the folder, take its lock, and record config, source and git state. Returns where
        an old run was moved. A second run racing for the same name is refused here."""
        self.check_free(overwrite)
        moved, old_lock = None, None
        try:
            if os.path.lexists(self.path):   # --overwrite: it is ours (locked) while we move it
                self.lock('--overwrite')
                stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
                moved = self.path.with_name(f'{self.path.name}.old-{stamp}')
                self.path.rename(moved)
                old_lock, self._lock = self._lock, None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.path.mkdir()   # atomic: of two runs started at once with one name, one gets here
            except FileExistsError:
                self.check_free(overwrite=False)   # says who writes it, or that it exists
                raise
            self.lock('--name', new=True)
            self.ckpt_dir.mkdir()
            self.write_config(config, command)
            self._source_skipped = self.copy_source()
            self.record_git()
        except OSError as e:
            raise os_error(self.path, e) from None
        finally:
            unlock_folder(old_lock)
        return moved

    def start(self, config: Mapping, command: Sequence[str], resume: bool, overwrite: bool = False) -> None:
        """Create the folder (or, on resume, record the new command in it) and log the command."""
        if resume:
            self.lock('--resume')
            try:
                self.write_config(config, command)
                if not (self.ckpt_dir / 'last.ckpt').exists():   # stopped before its first checkpoint
                    self._set_aside_partial_metrics()
                    self.log(f'restarted from the start (no checkpoint was written): {" ".join(mask_command(command))}')
                else:
                    self.log(f'resumed: {" ".join(mask_command(command))}')
            except OSError as e:
                raise os_error(self.path, e) from None
        else:
            moved = self.create(config, command, overwrite=overwrite)
            if moved is not None:
                print(f'moved the old {display_path(self.path)} to {display_path(moved)}')
            self.log(f'command: {" ".join(mask_command(command))}')
            if self._source_skipped:
                self.log(self._source_skipped)
        self.started = True

    def _set_aside_partial_metrics(self) -> None:
        """A restarted run's metrics begin anew; the killed attempt's are kept beside them."""
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
        for name in ('metrics.csv', 'tb'):
            if (self.path / name).exists():
                (self.path / name).rename(self.path / f'{name}.killed-{stamp}')

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a run: however it ends, the folder's lock is released (so the same process may
        run in it again); a NaN's message says whether a checkpoint is left to resume from. A run
        under way that ends on an error ends its log.txt with the `error: ...` line it prints, so
        that a failed run is told from a killed one (--runs)."""
        try:
            yield
        except NonFiniteLossError as e:
            self.record_non_finite(e)
            raise
        except Exception as e:
            if self.started:   # rank 0, once the folder is this run's
                self.log_quietly(f'error: {mask_text(error_text(e))}')
            raise
        finally:
            self.release()

    def log_quietly(self, line: str) -> None:
        """Append a line to log.txt unless the disk refuses it (it is full): the error in hand matters more."""
        try:
            self.log(line)
        except OSError:
            pass

    def record_non_finite(self, error: NonFiniteLossError) -> None:
        """A NaN stopped the run: say whether a checkpoint is left to resume from, and log it."""
        if not any(self.ckpt_dir.glob('*.ckpt')):
            error.no_checkpoint()
        if global_rank_from_env() == 0 and self.log_file.is_file():
            self.log(f'error: {error}')

    def write_config(self, config: Mapping, command: Sequence[str]) -> None:
        """config.yaml: the merged config with its references resolved (the values the run used),
        headed by every command that ran it (as comments, so the file still loads as a config).
        Secrets are written `***` (lightyaml/config/secrets.py): a rerun or resume asks for them again."""
        path = self.path / 'config.yaml'
        old = path.read_text().splitlines() if path.exists() else []
        header = list(itertools.takewhile(lambda line: line.startswith('#'), old))
        header.append(f'# {datetime.datetime.now().isoformat(timespec="seconds")}: {" ".join(mask_command(command))}')
        atomic_write(path, '\n'.join(header) + '\n' + dump_yaml(escape_references(mask_secrets(dict(config)))))

    def copy_source(self, root: Path = PROJECT_ROOT) -> Optional[str]:
        """Copy the project into src/ as lightyaml/run/source_copy.py decides (what git would commit,
        no secrets, no big files); returns the log.txt line naming what it skipped, or None."""
        # Never the save root or any experiment folder: with `--save-root .` the run would copy itself.
        skip = {self.path.resolve(), self.path.resolve().parent}
        skipped = source_copy.copy_source(
            root, self.path / 'src', keep_folder=lambda d: d.resolve() not in skip and not is_experiment_folder(d))
        return source_copy.skipped_line(skipped)

    def record_git(self, root: Path = PROJECT_ROOT) -> None:
        """git.txt (commit and status) and git.diff (uncommitted changes), inside a git checkout."""
        def git(*args: str) -> Optional[str]:
            try:
                done = subprocess.run([*source_copy.GIT, *args], cwd=root, capture_output=True, text=True, timeout=30)
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


def error_text(error: Exception) -> str:
    """An error as its `error: ...` line says it: a ConfigError's problems, a RunStoppedError's
    message, anything else its type and first line."""
    if isinstance(error, ConfigError):
        return '; '.join(error.problems)
    if isinstance(error, RunStoppedError):
        return str(error)
    return f'{type(error).__name__}: {(str(error).strip().splitlines() or [""])[0]}'


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write `path` (text, or bytes such as a PNG) through a temporary file beside it and a rename:
    readers see old or new."""
    tmp = path.with_name(path.name + '.tmp')
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)
