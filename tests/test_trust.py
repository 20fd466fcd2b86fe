"""What the Guarantees promise, against inputs nobody listed, by family (issue 12): unusual but
valid YAML, the experiment folder's lifecycle (one writer, nothing changed by a command that fails
or has nothing to do), paths that try to leave the folder, and checkpoint writes that are killed
when $TMPDIR is on another file system. Both entry points wherever a run is involved."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, QUIET, ROOT, RUNNERS

BOMB = 'a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n' + ''.join(
    f'{b}: &{b} [{", ".join([f"*{a}"] * 9)}]\n' for a, b in zip('abcdefgh', 'bcdefghi'))
DIGITS_TEXT = Path(DIGITS).read_text()
# The same by `${...}` references: each key copies the one before it ten times, as a list or a string.
REFERENCE_BOMB = 'a: [x, x, x, x, x, x, x, x, x, x]\n' + ''.join(
    f"{b}: [{', '.join([repr('${' + a + '}')] * 10)}]\n" for a, b in zip('abcdefgh', 'bcdefghi'))
STRING_BOMB = f"a: {'x' * 100}\n" + ''.join(f"{b}: '{('${' + a + '}') * 10}'\n" for a, b in zip('abcdefgh', 'bcdefghi'))


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file, folder and link below `folder` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b'',
                                         p.lstat().st_mtime_ns) for p in sorted(folder.rglob('*'))}


def one_error(err: str) -> str:
    """The one `error:` line a refused command printed (no traceback, nothing else on stderr)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err[-2000:]
    assert 'Traceback' not in err
    return lines[0]


# ------------------------------------------------------------------ family 2: valid but unusual YAML

# (config text, with {digits} for the default config's path; the error's text after `{file}: `)
YAML_CASES = {
    'billion laughs': (f'extends: {{digits}}\n{BOMB}', 'more than 100,000 values once its aliases are expanded'),
    'bomb in an extended file': ('extends: [{digits}, bomb.yaml]\n', 'more than 100,000 values once its aliases'),
    'reference bomb (lists)': (f'extends: {{digits}}\n{REFERENCE_BOMB}', ': references copy more than 100,000 values'),
    'reference bomb (strings)': (f'extends: {{digits}}\n{STRING_BOMB}', ': references copy more than 100,000 values'),
    'nested 10,000 lists': ('seed: ' + '[' * 10_000 + ']' * 10_000 + '\n', 'nested more than 64 levels deep'),
    'nested 100 mappings': ('a:\n' + ''.join(' ' * i + f'k{i}:\n' for i in range(1, 100)),
                            'nested more than 64 levels'),
    'recursive alias': ('extends: {digits}\ncallbacks: &c [*c]\n', 'an alias refers to a value that contains it'),
    'list as a key': ('? [a, b]\n: 1\n', 'invalid YAML: a key must be a plain value, not a list'),
    'mapping as a key': ('{? {a: 1}: 2}\n', 'invalid YAML: a key must be a plain value, not a dict'),
    'impossible date': ('extends: {digits}\nseed: 2001-13-01\n', 'invalid YAML: month must be in 1..12'),
    '5,000-digit integer': (f'extends: {{digits}}\nseed: {"9" * 5000}\n', 'invalid YAML: Exceeds the limit'),
    '!!set': ('extends: {digits}\ncallbacks: !!set {a, b}\n', 'callbacks: a YAML !!set cannot be a config value'),
    '!!omap': ('extends: {digits}\ncallbacks: !!omap [a: 1]\n', 'callbacks.0: a YAML !!omap or !!pairs cannot be'),
    'control character': ('seed: 0\x1f\n', 'invalid YAML: unacceptable character #x001f: special characters are'),
    'two documents': ('extends: {digits}\n---\nseed: 1\n', 'invalid YAML: expected a single document'),
    '3 MB file': ('seed: 0\n' + '#' * 3_000_000 + '\n', '3,000,009 bytes is too big for a config file'),
    'Latin-1 text': ('seed: 0 # caf\xe9\n'.encode('latin-1'),
                     'not UTF-8 text (byte 0xe9 at offset 13); save it as UTF-8'),
    'extends a binary file': ('extends: [{digits}, weights.bin]\n', 'a binary file, not a YAML config'),
    'extends a Latin-1 file': ('extends: [{digits}, latin.yaml]\n', 'not UTF-8 text (byte 0xe9 at offset 17)'),
}
YAML_FILES = {'bomb.yaml': BOMB.encode(), 'weights.bin': b'\x80\x02}q\x00(X\x05\x00\x00\x00seedq\x01K\x00u.\x00\x00',
              'latin.yaml': 'seed: 1\nname: caf\xe9\n'.encode('latin-1')}


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('case', YAML_CASES)
def test_unusual_yaml_is_one_clean_error(case: str, entry: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    text, problem = YAML_CASES[case]
    for name, data in YAML_FILES.items():
        (tmp_path / name).write_bytes(data)
    config = tmp_path / 'config.yaml'
    config.write_bytes(text if isinstance(text, bytes) else text.replace('{digits}', DIGITS).encode())
    assert RUNNERS[entry](tmp_path / 'save', '--config', str(config)) == 2
    line = one_error(capsys.readouterr().err)
    assert line.startswith(f'error: {tmp_path}/') and problem in line, line
    assert not (tmp_path / 'save').exists()


@pytest.mark.parametrize('entry', RUNNERS)
def test_an_override_nested_too_deep_is_one_clean_error(entry: str, save_root: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    deep = 'seed=' + '[' * 500 + ']' * 500
    assert RUNNERS[entry](save_root, '--config', DIGITS, deep) == 2
    assert one_error(capsys.readouterr().err) == f"error: override {deep!r}:1: nested more than 64 levels deep"
    assert not save_root.exists()


ALIASED = DIGITS_TEXT.replace('    val: {name: digits, args: {split: val}}', '    val: *train').replace(
    '    train: {name: digits, args: {split: train}}', '    train: &train {name: digits, args: {split: train}}')
MERGED = DIGITS_TEXT.replace(
    '    val: {name: digits, args: {split: val}}', '    val: {<<: *train, args: {split: val}}').replace(
    '    train: {name: digits, args: {split: train}}', '    train: &train {name: digits, args: {split: train}}')


@pytest.mark.parametrize('entry', RUNNERS)
def test_aliases_are_independent_copies_and_merge_keys_work(entry: str, tmp_path: Path) -> None:
    assert '*train' in ALIASED and '<<: *train' in MERGED
    (tmp_path / 'aliased.yaml').write_text(ALIASED)
    (tmp_path / 'merged.yaml').write_text(MERGED)
    run, save = RUNNERS[entry], tmp_path / 'save'
    one_epoch = ['trainer_params.max_epochs=1']
    # Overriding the aliased `val` must not change the `train` it came from.
    assert run(save, '--config', str(tmp_path / 'aliased.yaml'), '--name', 'aliased',
               'data_module.args.val.args.split=val', *one_epoch) == 0
    assert run(save, '--config', str(tmp_path / 'merged.yaml'), '--name', 'merged', *one_epoch) == 0
    from lightyaml.config.loading import load_config
    for name in ('aliased', 'merged'):
        splits = load_config(save / name / 'config.yaml')['data_module']['args']
        assert (splits['train'], splits['val']) == ({'name': 'digits', 'args': {'split': 'train'}},
                                                    {'name': 'digits', 'args': {'split': 'val'}}), name
    # ... and both ran what the plain config runs: the same first epoch to the last digit.
    assert run(save, '--config', DIGITS, '--name', 'plain', *one_epoch) == 0
    first_epoch = {name: (save / name / 'log.txt').read_text().split('epoch 1/1')[1].split('s, ')[0].rsplit(' ', 1)[0]
                   for name in ('aliased', 'merged', 'plain')}
    assert first_epoch['aliased'] == first_epoch['merged'] == first_epoch['plain']


# ------------------------------------------------------------------ family 3: the folder's lifecycle

@pytest.fixture(scope='module')
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-epoch digits run per entry point (never changed by the tests that use it)."""
    runs = {}
    for entry, run in RUNNERS.items():
        save = tmp_path_factory.mktemp(entry.replace('.', '_'))
        assert run(save, '--config', DIGITS, '--name', 'done', 'trainer_params.max_epochs=2') == 0
        runs[entry] = save / 'done'
    return runs


def weights_only(exp: Path) -> str:
    path = exp / 'ckpt' / 'weights.ckpt'   # inside ckpt/, so only the contents are wrong
    if not path.exists():
        state_dict = torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']
        torch.save({'state_dict': state_dict}, path)
    return str(path)


# (arguments after `--resume EXP`, the text the error line holds)
FAILED_RESUMES = {
    'changed shapes': (['train_wrapper.args.model_spec.args.hidden=[32]'],
                       "override 'train_wrapper.args.model_spec.args.hidden=[32]' changes the shape of "
                       'model.net.0.weight (512x64 in the checkpoint, 32x64 now); a resumed run keeps its shapes'),
    'another model': (['train_wrapper.args.model_spec.name=lenet5', 'train_wrapper.args.model_spec.args={}'],
                      'the config builds a different model: missing in the checkpoint: model.features.0.weight'),
    'weights-only checkpoint': ([], 'holds weights only (no epoch, global_step, optimizer_states, lr_schedulers, '
                                    'callbacks), so it cannot continue a run; start a new run from it with '
                                    '--init-from'),
}


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('case', FAILED_RESUMES)
def test_a_failed_resume_changes_nothing(case: str, entry: str, finished: dict[str, Path],
                                         capsys: pytest.CaptureFixture) -> None:
    exp = finished[entry]
    target = weights_only(exp) if case == 'weights-only checkpoint' else str(exp)
    before = state(exp)
    overrides, problem = FAILED_RESUMES[case]
    assert RUNNERS[entry](exp.parent, '--resume', target, 'trainer_params.max_epochs=4', *overrides) == 2
    line = one_error(capsys.readouterr().err)
    assert line.startswith('error: --resume ') and problem in line, line
    assert state(exp) == before


NOTHING_TO_DO = {   # overrides with `--resume` of a run that trained 2 epochs (80 steps)
    'max_epochs reached': (['trainer_params.max_epochs=2'], 'has trained 2 epochs and trainer_params.max_epochs is 2'),
    'max_epochs below': (['trainer_params.max_epochs=1'], 'has trained 2 epochs and trainer_params.max_epochs is 1'),
    'max_steps reached': (['trainer_params.max_epochs=5', 'trainer_params.max_steps=80'],
                          'has trained 80 steps and trainer_params.max_steps is 80'),
}


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('case', NOTHING_TO_DO)
def test_resuming_a_finished_run_says_so_and_changes_nothing(case: str, entry: str, finished: dict[str, Path],
                                                             capsys: pytest.CaptureFixture) -> None:
    exp = finished[entry]
    before = state(exp)
    overrides, reason = NOTHING_TO_DO[case]
    assert RUNNERS[entry](exp.parent, '--resume', str(exp), *overrides) == 0
    out = capsys.readouterr()
    assert out.err == '' and f'nothing to do: {exp} {reason}' in out.out
    assert state(exp) == before and (exp / 'result.yaml').is_file()


OWN_FILES = ['config.yaml', 'log.txt', 'metrics.csv', 'result.yaml', 'ckpt/last.ckpt', 'src/train.py', 'curves.png']


@pytest.mark.parametrize('entry', RUNNERS)
def test_predict_plot_or_export_out_never_replaces_a_file_of_an_experiment(entry: str, finished: dict[str, Path],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    exp = finished[entry]
    before = state(exp)
    for own in OWN_FILES:
        for flag, default in (('--predict', 'predictions.csv'), ('--plot', 'curves.png')):
            if own == default:
                continue
            assert RUNNERS[entry](exp.parent, flag, str(exp), '--out', str(exp / own)) == 2
            assert one_error(capsys.readouterr().err) == (
                f'error: {flag} --out {exp / own}: would replace a file of the experiment {exp}; write somewhere else')
    for own in ('config.yaml', 'ckpt/last.ckpt'):
        assert RUNNERS[entry](exp.parent, '--export', str(exp), '--format', 'torchscript', '--out', str(exp / own)) == 2
        assert one_error(capsys.readouterr().err) == (
            f'error: --export --out {exp / own}: would replace a file of the experiment {exp}; write somewhere else')
    assert RUNNERS[entry](exp.parent, '--predict', str(exp), '--out', str(exp / 'ckpt')) == 2
    assert one_error(capsys.readouterr().err) == f'error: --predict --out {exp / "ckpt"}: is a folder; give a file name'
    assert RUNNERS[entry](exp.parent, '--plot', str(exp), '--out', str(tmp_path / 'no' / 'a.png')) == 2
    assert one_error(capsys.readouterr().err) == (
        f'error: --plot --out {tmp_path / "no" / "a.png"}: the folder {tmp_path / "no"} does not exist')
    other = finished['train.py' if entry == 'train_pl.py' else 'train_pl.py']   # plotted first: its own curves
    assert RUNNERS[entry](exp.parent, '--plot', str(other), str(exp), '--out', str(exp / 'curves.png')) == 2
    assert one_error(capsys.readouterr().err) == (
        f'error: --plot --out {exp / "curves.png"}: would replace a file of the experiment {exp}; write somewhere else')
    assert state(exp) == before
    assert RUNNERS[entry](exp.parent, '--predict', str(exp), '--out', str(tmp_path / 'p.csv')) == 0
    assert (tmp_path / 'p.csv').read_text().startswith('index,pred,prob\n0,')
    assert state(exp) == before


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_nan_in_the_first_epoch_does_not_claim_a_checkpoint(entry: str, save_root: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    explode = ['train_wrapper.args.optim_spec.name=SGD', 'train_wrapper.args.optim_spec.args={lr: 1.0e+30}',
               'train_wrapper.args.scheduler_spec=null', 'trainer_params.max_epochs=3']
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'nan', *explode) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('error: non-finite training loss in epoch 1 (between ')
    assert line.endswith('training stopped before any checkpoint was saved (nothing to resume; fix the cause '
                         'and start again with --overwrite)')
    assert 'is kept' not in line
    assert list((save_root / 'nan' / 'ckpt').iterdir()) == []
    assert (save_root / 'nan' / 'log.txt').read_text().splitlines()[-1] == line


def start(entry: str, save: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, entry, '--config', DIGITS, '--save-root', str(save), *QUIET, *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize('entry', RUNNERS)
def test_two_runs_started_at_once_with_one_name_one_is_refused(entry: str, save_root: Path) -> None:
    runs = [start(entry, save_root, '--name', 'same', 'trainer_params.max_epochs=2') for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in runs)
    assert [code for code, _ in results] == [0, 2], results
    assert 'Traceback' not in results[1][1]
    [line] = [line for line in results[1][1].splitlines() if line.startswith('error')]
    assert line.startswith((f'error: --name: {save_root / "same"} is being written by another run (pid ',
                            f'error: --name: experiment folder {save_root / "same"} already exists')), line
    log = (save_root / 'same' / 'log.txt').read_text()
    assert log.count('command: ') == 1 and log.count('epoch 2/2') == 1   # one writer, one run
    assert sorted(p.name for p in save_root.iterdir()) == ['same']


@pytest.mark.slow
def test_a_folder_being_written_is_refused_to_every_other_writer_until_its_run_dies(
        save_root: Path, capsys: pytest.CaptureFixture) -> None:
    writer = start('train.py', save_root, '--name', 'busy', 'trainer_params.max_epochs=10000')
    exp = save_root / 'busy'
    try:
        deadline = time.monotonic() + 120
        while not (exp / 'ckpt' / 'last.ckpt').exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = f'{exp} is being written by another run (pid {writer.pid}); wait for it to end, or choose another --name'
        for entry, run in RUNNERS.items():
            for args, flag in [(['--config', DIGITS, '--name', 'busy'], '--name'),
                               (['--config', DIGITS, '--name', 'busy', '--overwrite'], '--overwrite'),
                               (['--resume', str(exp)], '--resume'), (['--test', str(exp)], '--test'),
                               (['--predict', str(exp)], '--predict')]:
                assert run(save_root, *args) == 2, (entry, args)
                assert one_error(capsys.readouterr().err) == f'error: {flag}: {busy}', (entry, args)
        assert sorted(p.name for p in save_root.iterdir()) == ['busy']   # nothing moved aside
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # A killed writer leaves no stale lock: the run continues from its last checkpoint.
    epochs = torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['epoch'] + 1
    assert RUNNERS['train.py'](save_root, '--resume', str(exp), f'trainer_params.max_epochs={epochs + 1}') == 0
    assert f'epoch {epochs + 1}/{epochs + 1}' in (exp / 'log.txt').read_text()


# ------------------------------------------------------------------ family 4: paths

def make_paths(tmp: Path) -> None:
    (tmp / 'a-file').write_text('not a folder\n')
    (tmp / 'dangling').symlink_to(tmp / 'nowhere')
    (tmp / 'save').mkdir()
    (tmp / 'save' / 'gone').symlink_to(tmp / 'nowhere')
    (tmp / 'loose').mkdir()


FILENAME_RULE = ("would write outside the experiment's ckpt/ folder; give a name such as '{epoch}-{val/acc:.3f}' "
                 "(subfolders are fine, '..' and absolute paths are not)")
# (arguments with {tmp}; the error line with {tmp}) - --save-root is {tmp}/save unless given
PATH_CASES = {
    'filename ../': (['checkpoint.filename=../../escaped'], "error: override 'checkpoint.filename=../../escaped': "
                     f"checkpoint.filename: '../../escaped' {FILENAME_RULE}"),
    'filename absolute': (['checkpoint.filename={tmp}/abs'], "error: override 'checkpoint.filename={tmp}/abs': "
                          f"checkpoint.filename: '{{tmp}}/abs' {FILENAME_RULE}"),
    'filename a/../..': (['checkpoint.filename=a/../../b'], "error: override 'checkpoint.filename=a/../../b': "
                         f"checkpoint.filename: 'a/../../b' {FILENAME_RULE}"),
    'save root is a file': (['--save-root', '{tmp}/a-file'],
                            'error: --save-root: {tmp}/a-file is a file, not a folder'),
    'save root below a file': (['--save-root', '{tmp}/a-file/save'],
                               'error: --save-root: {tmp}/a-file is a file, not a folder'),
    'save root /proc': (['--save-root', '/proc', '--name', 'lightyaml-trust'],
                        'error: /proc/lightyaml-trust: No such file or directory (writing the experiment folder)'),
    'save root dangling link': (['--save-root', '{tmp}/dangling'],
                                'error: --save-root: {tmp}/dangling is a symbolic link to {tmp}/nowhere, which does '
                                'not exist'),
    'folder is a dangling link': (['--name', 'gone'], 'error: --name: {tmp}/save/gone is a symbolic link to '
                                  '{tmp}/nowhere, which does not exist; remove the link or choose another --name'),
    '300-character name': (['--name', 'n' * 300], f"error: --name {'n' * 40}...: an experiment name may have at most "
                           '200 characters, not 300'),
    'resume a loose .ckpt': (['--resume', '{tmp}/loose/last.ckpt'], 'error: --resume {tmp}/loose/last.ckpt: this '
                             'checkpoint is not in the ckpt/ folder of an experiment (with its config.yaml); to start '
                             'a new run from its weights use --init-from {tmp}/loose/last.ckpt'),
    'resume a ckpt/ of no experiment': (['--resume', '{tmp}/loose/ckpt/last.ckpt'], 'error: --resume '
                                        '{tmp}/loose/ckpt/last.ckpt: this checkpoint is not in the ckpt/ folder of'),
}


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('case', PATH_CASES)
def test_paths_that_leave_the_folder_or_cannot_be_written_are_one_line(case: str, entry: str, tmp_path: Path,
                                                                       finished: dict[str, Path],
                                                                       capsys: pytest.CaptureFixture) -> None:
    make_paths(tmp_path)
    (tmp_path / 'loose' / 'ckpt').mkdir()
    for where in ('loose', 'loose/ckpt'):   # a checkpoint outside save/, and one whose grandparent is no experiment
        shutil.copy(finished[entry] / 'ckpt' / 'last.ckpt', tmp_path / where / 'last.ckpt')
    args, expected = PATH_CASES[case]
    args = [a.replace('{tmp}', str(tmp_path)) for a in args]
    before = state(tmp_path)
    if '--save-root' in args:
        i = args.index('--save-root')
        save, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    else:
        save = tmp_path / 'save'
    config = [] if '--resume' in args and 'loose/ckpt' not in args[1] else ['--config', DIGITS]
    assert RUNNERS[entry](save, *config, *args) == 2
    line = one_error(capsys.readouterr().err)
    assert line.startswith(expected.replace('{tmp}', str(tmp_path))), line
    assert state(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
@pytest.mark.parametrize('entry', RUNNERS)
def test_a_read_only_save_root_is_one_line(entry: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tmp_path.joinpath('ro').mkdir(mode=0o555)
    assert RUNNERS[entry](tmp_path / 'ro' / 'save', '--config', DIGITS) == 2
    assert one_error(capsys.readouterr().err) == f'error: --save-root: {tmp_path / "ro"} is not writable'


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_save_root_holding_the_project_does_not_copy_the_run_into_itself(entry: str) -> None:
    name = f'trust-save-root-{entry}-{os.getpid()}'
    exp = ROOT / name
    try:
        assert RUNNERS[entry](ROOT, '--config', DIGITS, '--name', name, 'trainer_params.max_epochs=1') == 0
        copied = {str(p.relative_to(exp / 'src')) for p in (exp / 'src').rglob('*')}
        assert 'train.py' in copied and 'configs/digits.yaml' in copied
        assert not any(p.startswith(name) for p in copied), sorted(copied)[:20]
        assert max(len(p.parts) for p in (exp / 'src').rglob('*')) < 12
    finally:
        shutil.rmtree(exp, ignore_errors=True)


# ------------------------------------------------------------------ family 5: atomic checkpoints

KILL_AT_SECOND_LAST_CKPT = '''
import os, shutil, signal, sys
sys.path.insert(0, os.getcwd())
saves = []
def dies_at_the_second_save(real):
    def move(src, dst, *args, **kwargs):
        if str(dst).endswith('last.ckpt'):
            saves.append(dst)
            if len(saves) == 2:   # the new checkpoint is complete but not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)
    return move
os.replace, os.rename, shutil.move = (dies_at_the_second_save(f) for f in (os.replace, os.rename, shutil.move))
import {module}
sys.exit({module}.main(sys.argv[1:]))
'''


@pytest.mark.slow
@pytest.mark.parametrize('entry', RUNNERS)
def test_a_kill_while_a_checkpoint_lands_keeps_the_old_one_with_tmpdir_elsewhere(entry: str, tmp_path: Path) -> None:
    other = Path('/dev/shm') if Path('/dev/shm').is_dir() and os.access('/dev/shm', os.W_OK) else tmp_path
    with_tmpdir = Path(os.path.realpath(other)) / f'lightyaml-tmpdir-{os.getpid()}'
    with_tmpdir.mkdir()
    try:
        env = {**os.environ, 'TMPDIR': str(with_tmpdir)}
        script = KILL_AT_SECOND_LAST_CKPT.replace('{module}', entry.removesuffix('.py'))
        done = subprocess.run([sys.executable, '-c', script, '--config', DIGITS, '--save-root', str(tmp_path),
                               '--name', 'killed', 'trainer_params.max_epochs=3', *QUIET],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert list(with_tmpdir.iterdir()) == []   # nothing was written through $TMPDIR
    finally:
        shutil.rmtree(with_tmpdir, ignore_errors=True)
    state = torch.load(tmp_path / 'killed' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['epoch'] == 0 and state['global_step'] == 40   # the first epoch's, whole
