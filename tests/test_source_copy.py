"""What a run copies of the project into its src/ (lightyaml/run/source_copy.py): what git tracks plus
the untracked files git would not ignore (outside git: the same rules from the .gitignore files), but what
.gitattributes marks export-ignore, never a file named like a secret, none over 1 MiB (listed in log.txt),
with the modes the user's umask gives."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DIGITS, QUIET, ROOT, RUNNERS
from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.source_copy import copy_source, looks_like_secret, skipped_line, walk_unignored

FAST = ['trainer_params.max_epochs=1', 'trainer_params.limit_train_batches=2', 'trainer_params.limit_val_batches=2']
HAS_GIT = shutil.which('git') is not None


def write(root: Path, files: dict[str, str]) -> None:
    """Each file of `files` (path: text) below `root`."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def big_file(path: Path) -> None:
    """A 300 MiB file that takes no disk space (sparse)."""
    with open(path, 'wb') as f:
        f.truncate(300 << 20)


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file()}


@pytest.mark.skipif(not HAS_GIT, reason='needs git')
def test_a_git_checkout_copies_what_git_would_commit_but_no_secrets_or_big_files(tmp_path: Path) -> None:
    project = tmp_path / 'project'
    write(project, {'.gitignore': '*.log\nbuild/\n', 'train.py': 'x = 1\n', 'models/tokenizer.py': '',
                    'configs/a.yaml': 'seed: 0\n', 'old.log': 'tracked though ignored\n', 'secrets.yaml': 'k: v\n',
                    '.env': 'API_KEY=1\n', 'keys/server.pem': '', 'notes.md': 'untracked\n', 'debug.log': '',
                    'build/out.txt': ''})
    big_file(project / 'data.bin')
    subprocess.run(['git', 'init', '-q'], cwd=project, check=True)
    subprocess.run(['git', 'add', '-f', '.gitignore', 'train.py', 'models', 'configs', 'old.log', 'secrets.yaml',
                    '.env', 'keys'], cwd=project, check=True)
    skipped = copy_source(project, tmp_path / 'src')
    assert files_below(tmp_path / 'src') == {'.gitignore', 'train.py', 'models/tokenizer.py', 'configs/a.yaml',
                                             'old.log', 'notes.md'}
    assert skipped_line(skipped) == ('src/: skipped 4 files: .env (looks like a secret), data.bin (300.0 MiB, '
                                     'over the 1 MiB limit), keys/server.pem (looks like a secret), '
                                     'secrets.yaml (looks like a secret)')


# A tree and its .gitignore files, with what git leaves of it (checked against git itself below).
IGNORES = {'.gitignore': '# data and builds\n*.log\n!keep.log\n/build/\ndata/**\n!data/README.md\n**/cache/\n'
                         'doc?.md\n[ab].txt\nsub/deep/*.csv\ntrailing.txt   \n\\#hash.txt\n',
           'sub/.gitignore': '*.tmp\n!important.tmp\n/local.txt\n'}
KEPT = {'.gitignore', 'sub/.gitignore', 'keep.log', 'sub/build/o.txt', 'data/README.md', 'other/cache', 'doc12.md',
        'c.txt', 'sub/deep/more/t.csv', 't.csv', 'sub/important.tmp', 'a.tmp', 'sub/deeper/local.txt', 'local.txt'}
IGNORED = {'a.log', 'sub/x.log', 'build/o.txt', 'data/x.bin', 'data/sub/y', 'cache/c.txt', 'sub/cache/c.txt',
           'doc1.md', 'a.txt', 'sub/deep/t.csv', 'trailing.txt', '#hash.txt', 'sub/a.tmp', 'sub/local.txt'}


def test_outside_git_the_gitignore_files_decide_as_git_would(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path))   # tmp_path is in no checkout, wherever it is
    project = tmp_path / 'project'
    write(project, {**IGNORES, **{name: '' for name in KEPT | IGNORED if name not in IGNORES}})
    copy_source(project, tmp_path / 'src')
    assert files_below(tmp_path / 'src') == KEPT
    if HAS_GIT:   # the same answer as git's own
        subprocess.run(['git', 'init', '-q'], cwd=project, check=True)
        listed = subprocess.run(['git', 'ls-files', '--others', '--exclude-standard'], cwd=project, check=True,
                                capture_output=True, text=True).stdout.split('\n')
        assert set(filter(None, listed)) - {'.git'} == KEPT == set(walk_unignored(project, lambda folder: True))


ATTRIBUTES = {'.gitattributes': '# left out of archives\ntests/** export-ignore\n*.ipynb export-ignore\n'
                                  'keep.ipynb -export-ignore\n\n',
              'nb/.gitattributes': 'draft* export-ignore\n',
              'train.py': '', 'tests/test_x.py': '', 'tests/data/a.csv': '', 'nb/a.ipynb': '', 'nb/keep.ipynb': '',
              'nb/draft.py': '', 'nb/final.py': '', 'other/tests/t.py': ''}
EXPORTED = {'.gitattributes', 'nb/.gitattributes', 'train.py', 'nb/keep.ipynb', 'nb/final.py', 'other/tests/t.py'}


@pytest.mark.skipif(not HAS_GIT, reason='needs git')
def test_what_gitattributes_marks_export_ignore_is_left_out_as_git_archive_does(tmp_path: Path) -> None:
    project = tmp_path / 'project'
    write(project, ATTRIBUTES)
    outside = copy_source(project, tmp_path / 'outside')   # not a checkout yet: the files decide
    subprocess.run(['git', 'init', '-q'], cwd=project, check=True)
    subprocess.run(['git', 'add', '.'], cwd=project, check=True)
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x'], cwd=project, check=True)
    inside = copy_source(project, tmp_path / 'inside')
    archived = subprocess.run(['git', 'archive', 'HEAD'], cwd=project, capture_output=True, check=True).stdout
    tar = subprocess.run(['tar', '-t'], input=archived, capture_output=True, check=True).stdout.decode().split()
    assert {name for name in tar if not name.endswith('/')} == EXPORTED   # git's own verdict
    assert files_below(tmp_path / 'outside') == files_below(tmp_path / 'inside') == EXPORTED
    assert outside == inside == []   # left out silently, as ignored files are


@pytest.mark.parametrize(('name', 'secret'), [
    ('.env', True), ('.env.local', True), ('server.PEM', True), ('tls.key', True), ('id_rsa', True),
    ('id_ed25519.pub', True), ('client_secret.json', True), ('secrets.yaml', True), ('credentials.json', True),
    ('.netrc', True), ('.pgpass', True), ('cert.p12', True), ('cert.pfx', True), ('.htpasswd', True),
    ('hf_token', True), ('token.txt', True), ('api-tokens.json', True), ('.ssh/config', True),
    ('tokenizer.py', False), ('detokenize.py', False), ('lightyaml/config/secrets.py', False),
    ('id_mapping.py', False), ('keys.py', False), ('README.md', False), ('configs/digits.yaml', False)])
def test_files_named_like_secrets_are_never_copied(name: str, secret: bool) -> None:
    assert looks_like_secret(name) is secret


def test_copies_have_the_modes_the_umask_gives_and_keep_their_times(tmp_path: Path) -> None:
    write(tmp_path / 'project', {'run.sh': 'echo hi\n'})
    (tmp_path / 'project' / 'run.sh').chmod(0o755)
    os.utime(tmp_path / 'project' / 'run.sh', (1_000_000_000, 1_000_000_000))
    old = os.umask(0o077)
    try:
        copy_source(tmp_path / 'project', tmp_path / 'src')
    finally:
        os.umask(old)
    copied = tmp_path / 'src' / 'run.sh'
    assert (copied.stat().st_mode & 0o777, copied.stat().st_mtime) == (0o600, 1_000_000_000)


def test_the_save_root_experiments_data_and_virtualenvs_inside_the_project_are_not_copied(tmp_path: Path) -> None:
    project = tmp_path / 'project'
    write(project, {'train.py': '', 'runs/old/config.yaml': '', 'runs/old/log.txt': '', 'runs/notes.md': '',
                    'elsewhere/config.yaml': '', 'elsewhere/ckpt/last.ckpt': '', 'load/x.csv': '',
                    'myenv/pyvenv.cfg': '', 'myenv/lib/site.py': '', '__pycache__/a.pyc': ''})
    exp = ExperimentDir(project / 'runs' / 'new')
    exp.path.mkdir()
    (exp.path / 'config.yaml').write_text('seed: 0\n')
    assert exp.copy_source(project) is None
    assert files_below(exp.path / 'src') == {'train.py'}


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_run_copies_this_repository_in_under_a_megabyte(entry: str, save_root: Path) -> None:
    assert RUNNERS[entry](save_root, '--config', DIGITS, *FAST) == 0
    src = save_root / 'digits' / 'src'
    assert sum(p.stat().st_size for p in src.rglob('*') if p.is_file()) < 1_000_000
    # .gitattributes leaves the tests, docs, benchmark and CI script out, as `git archive` would.
    assert not any((src / folder).exists() for folder in ('tests', 'docs', 'bench', '.ci'))
    assert (src / 'train.py').is_file() and (src / 'lightyaml' / 'registry.py').is_file()
    assert {p.name for p in (src / 'configs').glob('*.yaml')} == {p.name for p in (ROOT / 'configs').glob('*.yaml')}


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_run_lists_what_it_did_not_copy_in_log_txt(entry: str, tmp_path: Path) -> None:
    project = tmp_path / 'project'   # a copy outside git: its .gitignore decides
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    (project / '.env').write_text('WANDB_API_KEY=abc\n')
    big_file(project / 'load_me.bin')
    done = subprocess.run([sys.executable, entry, '--config', 'configs/digits.yaml', '--save-root', 'runs', *FAST,
                           *QUIET], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    exp = project / 'runs' / 'digits'
    lines = (exp / 'log.txt').read_text().splitlines()
    assert lines[0].startswith(f'command: python {entry} ')
    assert lines[1] == ('src/: skipped 2 files: .env (looks like a secret), '
                        'load_me.bin (300.0 MiB, over the 1 MiB limit)')
    copied = files_below(exp / 'src')
    assert 'train.py' in copied and not any(p.startswith('runs/') for p in copied)
