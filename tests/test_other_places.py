"""Runs work where jobs really run (issue 24, point 9): as an unprivileged user with a writable save
root, from another working directory, under a path with spaces and non-ASCII letters, with HOME unset
or not writable, and from a read-only project tree with --save-root elsewhere. Both entry points."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import QUIET, ROOT, RUNNERS

FAST = ['trainer_params.max_epochs=1', 'trainer_params.limit_train_batches=2', 'trainer_params.limit_val_batches=2']
NOBODY = 65534


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder anyone may write, outside pytest's private tmp_path (which other users cannot reach)."""
    folder = Path(tempfile.mkdtemp(prefix='lightyaml-places-'))
    folder.chmod(0o777)
    (folder / 'tmp').mkdir(mode=0o777)
    (folder / 'tmp').chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_nobody() -> list[str]:
    """The command prefix that runs as the unprivileged `nobody`. Where the interpreter's packages lie
    in a folder only root may enter (/root/.pyenv), nobody may also read (not write) every file."""
    readable = all(os.stat(p).st_mode & stat.S_IXOTH for p in Path(sys.prefix).resolve().parents)
    keep_reading = [] if readable else ['--inh-caps=+dac_read_search', '--ambient-caps=+dac_read_search']
    return ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', *keep_reading]


def run(entry: str, save_root: Path, cwd: Path, env: dict[str, str], prefix: list[str] = (),
        script: Path | None = None) -> Path:
    """Run `entry` as a new process; returns the experiment folder after checking that it worked."""
    env = {**env, 'TMPDIR': env.get('TMPDIR', tempfile.gettempdir())}
    done = subprocess.run([*prefix, sys.executable, str(script or ROOT / entry), '--config',
                           str(ROOT / 'configs' / 'digits.yaml'), '--save-root', str(save_root), *FAST, *QUIET],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Traceback' not in done.stderr and 'MPLCONFIGDIR' not in done.stderr, done.stderr[-3000:]
    exp = save_root / 'digits'
    for name in ('config.yaml', 'log.txt', 'result.yaml', 'ckpt/last.ckpt', 'src/train.py'):
        assert (exp / name).is_file(), name
    return exp


@pytest.mark.parametrize('entry', RUNNERS)
def test_from_another_folder_into_a_save_root_with_spaces_and_non_ascii_letters(entry: str, tmp_path: Path) -> None:
    (tmp_path / 'x').mkdir()
    exp = run(entry, tmp_path / 'my runs ü', cwd=tmp_path / 'x', env=dict(os.environ))
    assert not (tmp_path / 'x' / 'save').exists()
    assert (exp / 'log.txt').read_text().startswith(f'command: python {entry} --config ')
    assert f"--save-root {tmp_path / 'my runs ü'} " in (exp / 'log.txt').read_text()


@pytest.mark.parametrize('entry', RUNNERS)
def test_with_home_unset(entry: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ('HOME', 'XDG_CONFIG_HOME', 'XDG_CACHE_HOME')}
    run(entry, tmp_path / 'save', cwd=tmp_path, env={**env, 'TMPDIR': str(tmp_path)})


@pytest.mark.parametrize('entry', RUNNERS)
def test_as_an_unprivileged_user_whose_home_is_not_writable(entry: str, open_folder: Path) -> None:
    home = open_folder / 'home'
    home.mkdir(mode=0o555)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith('XDG_')}, 'HOME': str(home),
           'TMPDIR': str(open_folder / 'tmp')}
    if os.geteuid() == 0:
        if not shutil.which('setpriv'):
            pytest.skip('needs setpriv to run as nobody')
        exp = run(entry, open_folder / 'save', cwd=open_folder, env=env, prefix=as_nobody())
        assert exp.stat().st_uid == NOBODY
    else:   # already unprivileged
        run(entry, open_folder / 'save', cwd=open_folder, env=env)
    assert list(home.iterdir()) == []


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git to list the project files')
@pytest.mark.parametrize('entry', RUNNERS)
def test_from_a_read_only_project_tree_with_the_save_root_elsewhere(entry: str, tmp_path: Path) -> None:
    project = tmp_path / 'project'
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split('\0')
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    paths = [project, *project.rglob('*')]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)
    before = {p: p.stat().st_mtime_ns for p in paths}
    try:
        run(entry, tmp_path / 'save', cwd=project, env=dict(os.environ), script=project / entry)
        after = {p: p.stat().st_mtime_ns for p in [project, *project.rglob('*')] if '__pycache__' not in p.parts}
        assert after == {p: t for p, t in before.items() if '__pycache__' not in p.parts}   # nothing written there
    finally:
        for path in [project, *project.rglob('*')]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
