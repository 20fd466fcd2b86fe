"""Corners of the flags and checkpoints, both entry points: a bad device count or scheduler
frequency, a corrupt or pickled best checkpoint, a resume that changes the model's shapes, an
`--init-from` holding strings, a name starting with '-', a plot format that cannot be written and a
full disk are each one `error:` line (exit 2, nothing changed; a run under way: exit 1), and
train.py says what train_pl.py says."""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, RUNNERS
from lightyaml.run.disk_space import full_disk_cause

FAST = ['trainer_params.max_epochs=1', 'trainer_params.limit_train_batches=2', 'trainer_params.limit_val_batches=2',
        'train_wrapper.args.model_spec.args.hidden=[16]']


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder below `folder` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b'', p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob('*'))} if folder.exists() else {}


def one_error(err: str) -> str:
    """The one `error:` line a refused command printed (no traceback, nothing else on stderr)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err[-2000:]
    return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished one-epoch run (hidden layer of 16) per entry point."""
    runs = {}
    for entry, run in RUNNERS.items():
        save = tmp_path_factory.mktemp(entry.replace('.', '_'))
        assert run(save, '--config', DIGITS, '--name', 'x', *FAST) == 0
        runs[entry] = save / 'x'
    return runs


def best_checkpoint(exp: Path) -> Path:
    return next(p for p in (exp / 'ckpt').iterdir() if p.name != 'last.ckpt')


# ------------------------------------------------------------------ values train.py used to trip on

o = "error: override '{0}': "
BAD_VALUES = {   # override -> the line, identical from both entry points
    'trainer_params.devices=abc': o + "trainer_params.devices: expected 'auto', a number of devices >= 1 (-1: all), "
                                      "or a list of device indices such as [0, 1], got 'abc'",
    'trainer_params.devices=0': o + "trainer_params.devices: expected 'auto', a number of devices >= 1 (-1: all), "
                                    "or a list of device indices such as [0, 1], got 0",
    'train_wrapper.args.scheduler_spec.frequency=0': o + 'train_wrapper.args.scheduler_spec.frequency: expected an '
                                                         'integer >= 1 (step every N intervals), got 0',
}


@pytest.mark.parametrize('override', BAD_VALUES)
@pytest.mark.parametrize('entry', RUNNERS)
def test_a_bad_device_count_or_scheduler_frequency_is_one_line_before_anything_is_created(
        entry: str, override: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert RUNNERS[entry](save_root, '--config', DIGITS, *FAST, override) == 2
    assert one_error(capsys.readouterr().err) == BAD_VALUES[override].format(override)
    assert not save_root.exists()


# ------------------------------------------------------------------ checkpoints

def corrupt(exp: Path, how: str) -> Path:
    """A copy of `exp` whose best checkpoint is cut in half, or a pickle payload weights_only refuses."""
    copy = exp.parent / f'{exp.name}_{how}'
    if not copy.exists():
        shutil.copytree(exp, copy)
        best = best_checkpoint(copy)
        if how == 'truncated':
            best.write_bytes(best.read_bytes()[:best.stat().st_size // 2])
        else:
            torch.save({'state_dict': {}, 'payload': PrintsOnLoad()}, best)
    return copy


class PrintsOnLoad:
    def __reduce__(self) -> tuple:
        return print, ('this ran on load',)


CORRUPT = {'truncated': 'truncated, corrupt or not a torch file: ',
           'pickled': 'it holds a pickled Python object, print, that loading with weights_only=True refuses; '
                      'a checkpoint holds tensors and plain values only)'}


@pytest.mark.parametrize('flag', ['--test', '--predict', '--export'])
@pytest.mark.parametrize('how', CORRUPT)
@pytest.mark.parametrize('entry', RUNNERS)
def test_a_corrupt_or_pickled_best_checkpoint_is_one_line_naming_it(
        entry: str, how: str, flag: str, trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    exp = corrupt(trained[entry], how)
    before = state(exp)
    assert RUNNERS[entry](exp.parent, flag, str(exp)) == 2
    line = one_error(capsys.readouterr().err)
    assert line.startswith(f'error: {flag} {exp}: cannot read the checkpoint {best_checkpoint(exp)} ({CORRUPT[how]}')
    assert state(exp) == before


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_resume_that_changes_the_shapes_is_refused_naming_the_override_and_the_parameter(
        entry: str, trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    exp = trained[entry]
    before = state(exp)
    override = 'train_wrapper.args.model_spec.args.hidden=[999]'
    assert RUNNERS[entry](exp.parent, '--resume', str(exp), 'trainer_params.max_epochs=3', override) == 2
    assert one_error(capsys.readouterr().err) == (
        f"error: --resume {exp}/ckpt/last.ckpt: override '{override}' changes the shape of model.net.0.weight "
        f'(16x64 in the checkpoint, 999x64 now); a resumed run keeps its shapes: start a new run with the change '
        f'instead (--config {exp}/config.yaml --name NEW_NAME ...)')
    assert state(exp) == before


@pytest.mark.parametrize('entry', RUNNERS)
def test_init_from_a_state_dict_of_strings_is_one_line(entry: str, save_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    strings = tmp_path / 'strings.ckpt'
    torch.save({'state_dict': {'model.net.0.weight': 'hello'}}, strings)
    assert RUNNERS[entry](save_root, '--config', DIGITS, *FAST, '--init-from', str(strings)) == 2
    assert one_error(capsys.readouterr().err) == (
        f"error: --init-from {strings}: {strings} is not a lightyaml/Lightning checkpoint (its state_dict holds a str "
        f"at 'model.net.0.weight', not a tensor)")
    assert not save_root.exists()


# ------------------------------------------------------------------ flags

@pytest.mark.parametrize('entry', RUNNERS)
def test_a_name_that_starts_with_a_dash_is_refused(entry: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert RUNNERS[entry](save_root, '--config', DIGITS, *FAST, '--name=-x') == 2
    assert one_error(capsys.readouterr().err) == (
        "error: --name '-x': an experiment name may not start with '-' (it reads as a flag); e.g. --name x")
    assert not save_root.exists()
    # `--name -x` reads -x as a flag: argparse's refusal is one line too, without the usage text.
    with pytest.raises(SystemExit) as stop:
        RUNNERS[entry](save_root, '--config', DIGITS, '--name', '-x')
    assert stop.value.code == 2
    assert one_error(capsys.readouterr().err) == 'error: argument --name: expected one argument (see --help)'


@pytest.mark.parametrize('entry', RUNNERS)
def test_plot_to_a_format_the_plotter_cannot_write_is_one_line(entry: str, trained: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    exp = trained[entry]
    before = state(exp)
    assert RUNNERS[entry](exp.parent, '--plot', str(exp), '--out', str(tmp_path / 'x.yaml')) == 2
    assert one_error(capsys.readouterr().err) == (
        f'error: --plot --out {tmp_path}/x.yaml: the plotter writes png only, not .yaml (e.g. --out {tmp_path}/x.png)')
    assert not (tmp_path / 'x.yaml').exists() and state(exp) == before


# ------------------------------------------------------------------ the two entry points agree

AGREE = [['--config', DIGITS, *FAST, o] for o in BAD_VALUES] + [
    ['--config', DIGITS, *FAST, '--name=-x'],
    ['--config', DIGITS, *FAST, 'trainer_params.devices=[]'],
    ['--config', DIGITS, *FAST, 'train_wrapper.args.scheduler_spec.frequency=two'],
]


def test_both_entry_points_answer_these_bad_inputs_with_the_same_line(
        save_root: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    for args in AGREE + [['--test', '{truncated}'], ['--test', '{pickled}']]:
        lines = {}
        for entry, run in RUNNERS.items():
            # Each entry point on a copy of its own run, shown as the same path.
            exp = {how: corrupt(trained[entry], how) for how in CORRUPT}
            given = [a.format(**exp) if a.startswith('{') else a for a in args]
            assert run(save_root, *given) == 2, (entry, args)
            lines[entry] = one_error(capsys.readouterr().err).replace(str(trained[entry].parent), 'SAVE')
        assert lines['train.py'] == lines['train_pl.py'], args
    assert not save_root.exists()


# ------------------------------------------------------------------ a full disk

@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 5 MB tmpfs: a run's first two checkpoints fit, a third does not."""
    mount = tmp_path / 'disk'
    mount.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=5m', 'tmpfs', str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f'cannot mount a small tmpfs here: {done.stderr.decode().strip()}')
    yield mount
    subprocess.run(['umount', '--lazy', str(mount)], check=False)   # lazy: a closing file may still hold it


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_full_disk_names_the_file_system_and_the_space_left(entry: str, small_disk: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    run = RUNNERS[entry]
    # A bigger hidden layer (1.8 MB checkpoints): epoch 1 writes its best and last, epoch 2 fills the disk.
    big = [*FAST[:-1], 'train_wrapper.args.model_spec.args.hidden=[2000]', 'trainer_params.max_epochs=4']
    status = run(small_disk, '--config', DIGITS, '--name', 'x', *big)
    line = one_error(capsys.readouterr().err)
    exp = small_disk / 'x'
    fs = rf'\(tmpfs mounted on {re.escape(str(small_disk))}, \d+\.\d MB free\)'
    assert status == 1, line   # under way: torch's writer failed; the stop line says the disk is full
    assert re.fullmatch(rf'error: run stopped: no space left on the file system of {re.escape(str(exp))} {fs}'
                        rf' while writing {re.escape(str(exp))}/ckpt/\S+\.ckpt; the last good checkpoint '
                        rf'{re.escape(str(exp))}/ckpt/last\.ckpt \(epoch \d\) is kept; continue with --resume '
                        rf'{re.escape(str(exp))} \(--debug shows the traceback\)', line), line
    assert not list((exp / 'ckpt').glob('*.tmp'))
    torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)   # whole


def test_the_message_of_a_quota_says_so(tmp_path: Path) -> None:
    error = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / 'log.txt'))
    cause = full_disk_cause(error, tmp_path)
    assert cause.startswith(f'the disk quota is exceeded on the file system of {tmp_path} (') and cause.endswith(
        f' MB free) while writing {tmp_path}/log.txt')
    assert full_disk_cause(OSError(errno.EACCES, 'Permission denied'), tmp_path) is None
