"""train.py: the same configs and experiment folder as train_pl.py, without Lightning."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DIGITS, EPOCH_LINE, QUIET, ROOT, evaluate, run_pl, run_py


def epoch_lines(exp: Path) -> list[re.Match]:
    return [EPOCH_LINE.match(line) for line in (exp / 'log.txt').read_text().splitlines() if line.startswith('epoch')]


def csv_columns(exp: Path) -> list[str]:
    with open(exp / 'metrics.csv') as f:
        return next(csv.reader(f))


@pytest.fixture(scope='module')
def both_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The default digits config trained by each entry point, same seed."""
    save_root = tmp_path_factory.mktemp('save')
    assert run_py(save_root, '--config', DIGITS, '--name', 'plain') == 0
    assert run_pl(save_root, '--config', DIGITS, '--name', 'lightning') == 0
    return save_root / 'plain', save_root / 'lightning'


def test_parity_with_train_pl_within_half_a_point(both_runs: tuple[Path, Path]) -> None:
    plain, lightning = both_runs
    plain_lines, lightning_lines = epoch_lines(plain), epoch_lines(lightning)
    assert all(plain_lines) and len(plain_lines) == len(lightning_lines) == 30
    assert float(plain_lines[-1][3]) >= 0.97
    assert abs(float(plain_lines[-1][3]) - float(lightning_lines[-1][3])) <= 0.005


def test_same_seed_gives_bit_identical_weights_in_both_entry_points(both_runs: tuple[Path, Path]) -> None:
    # Both seed the same generators, build the model in the same order, draw the shuffle and the
    # dropout masks from the same global RNG and use the same optimizer and scheduler calls.
    plain, lightning = both_runs
    a = torch.load(plain / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']
    b = torch.load(lightning / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_same_experiment_folder_as_train_pl(both_runs: tuple[Path, Path]) -> None:
    plain, lightning = both_runs
    for name in ('config.yaml', 'log.txt', 'metrics.csv', 'src/train.py', 'src/utils.py', 'ckpt/last.ckpt'):
        assert (plain / name).is_file(), name
    assert list((plain / 'tb').glob('events.out.tfevents.*'))
    assert csv_columns(plain) == csv_columns(lightning)
    assert (plain / 'log.txt').read_text().splitlines()[:2] == [
        f'command: python train.py --config {DIGITS} --name plain --save-root {plain.parent} {QUIET[0]}',
        'parameters: 38,410 total (model 38,410)']
    best = sorted(p.name for p in (plain / 'ckpt').glob('epoch=*.ckpt'))
    assert len(best) == 1 and best == sorted(p.name for p in (lightning / 'ckpt').glob('epoch=*.ckpt'))


def test_both_entry_points_write_the_same_result_yaml(both_runs: tuple[Path, Path]) -> None:
    """The same keys, the epoch-level metrics only (issue 28: train.py wrote `epoch` and `step`,
    train_pl.py `train/loss_step`), the same best checkpoint; the values agree within float sums."""
    plain, lightning = (yaml.safe_load((exp / 'result.yaml').read_text()) for exp in both_runs)
    assert list(plain) == list(lightning) == ['final', 'best']
    assert list(plain['final']) == list(lightning['final']) == ['train/loss', 'val/acc', 'val/loss', 'val/top3']
    assert plain['final'] == pytest.approx(lightning['final'], abs=1e-6)
    assert plain['best'] == pytest.approx(lightning['best'])


def test_weights_move_between_the_entry_points(both_runs: tuple[Path, Path]) -> None:
    from lightyaml.train.task import Task
    from models.wrappers.base import BaseWrapper
    plain, lightning = both_runs
    # A train.py checkpoint rebuilds the Lightning wrapper alone (hyper-parameters included).
    wrapper = BaseWrapper.load_from_checkpoint(plain / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)
    assert evaluate(wrapper) == pytest.approx(float(epoch_lines(plain)[-1][3]), abs=1e-4)
    # A Lightning checkpoint's state_dict loads into train.py's Task with the same keys.
    state = torch.load(lightning / 'ckpt' / 'last.ckpt', weights_only=True)
    task = Task(**state['hyper_parameters'])
    task.load_state_dict(state['state_dict'])
    assert evaluate(task) == pytest.approx(float(epoch_lines(lightning)[-1][3]), abs=1e-4)


def test_train_py_never_imports_lightning(tmp_path: Path) -> None:
    blocked = tmp_path / 'blocked'
    for name in ('pytorch_lightning', 'lightning'):
        (blocked / name).mkdir(parents=True)
        (blocked / name / '__init__.py').write_text(f'raise ImportError("{name} is blocked in this test")\n')
    env = {**os.environ, 'PYTHONPATH': str(blocked)}
    done = subprocess.run([sys.executable, 'train.py', '--config', DIGITS, '--save-root', str(tmp_path / 'save'),
                           'trainer_params.max_epochs=2', *QUIET], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2].startswith('epoch 2/2')
    assert done.stdout.splitlines()[-1].startswith('done: best val/acc ')
    check = subprocess.run([sys.executable, '-c', 'import pytorch_lightning'], env=env, capture_output=True, text=True)
    assert 'blocked in this test' in check.stderr   # the block works


@pytest.mark.parametrize('override, message', [
    ('trainer_params.strategy=ddp', "trainer_params.strategy: train.py (use train_pl.py for other Trainer arguments) "
                                    "does not take 'strategy'; it takes: max_epochs, max_steps, "
                                    'check_val_every_n_epoch, limit_train_batches, limit_val_batches, '
                                    'gradient_clip_val, accumulate_grad_batches, precision, accelerator, devices, '
                                    'deterministic, log_every_n_steps, ...'),
    ('trainer_params.precision=16-true', "trainer_params.precision: expected one of 32, '32', '32-true', '16-mixed', "
                                         "'bf16-mixed', got str '16-true'"),
    ('checkpoint.auto_insert_metric_name=false', "checkpoint.auto_insert_metric_name: train.py (use train_pl.py for "
                                                 "other ModelCheckpoint arguments) does not take "
                                                 "'auto_insert_metric_name'; it takes: monitor, mode, save_top_k, "
                                                 'save_last, every_n_epochs, filename'),
    ('train_wrapper.name=gan', "train_wrapper.name: train.py runs the 'base' wrapper only, not 'gan'; "
                               'use train_pl.py for it'),
    ('callbacks=[{name: x}]', "callbacks.0: train.py runs only the 'ema' callback, not 'x'; use train_pl.py for "
                              'Lightning callbacks'),
])
def test_what_train_py_cannot_honour_is_refused_by_name(override: str, message: str, save_root: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert run_py(save_root, '--config', DIGITS, override) == 2
    assert capsys.readouterr().err == f"error: override '{override}': {message}\n"
    assert not save_root.exists()


def test_trainer_params_with_a_plain_meaning_are_honoured(save_root: Path) -> None:
    args = ['trainer_params.max_epochs=3', 'trainer_params.limit_train_batches=6', 'trainer_params.max_steps=5',
            'trainer_params.accumulate_grad_batches=2', 'trainer_params.gradient_clip_val=0.5',
            'trainer_params.precision=bf16-mixed', 'trainer_params.deterministic=true',
            'trainer_params.limit_val_batches=0.5', 'trainer_params.log_every_n_steps=1']
    assert run_py(save_root, '--config', DIGITS, '--name', 'knobs', *args) == 0
    state = torch.load(save_root / 'knobs' / 'ckpt' / 'last.ckpt', weights_only=True)
    # 6 batches an epoch, 2 per optimizer step: 3 steps an epoch, stopped by max_steps=5 in epoch 2.
    assert (state['epoch'], state['global_step']) == (1, 5)
    with open(save_root / 'knobs' / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['step']) for r in rows if r['train/loss_step']] == [0, 1, 2, 3, 4]


def test_validation_every_n_epochs_and_a_step_scheduler(save_root: Path) -> None:
    args = ['trainer_params.max_epochs=4', 'trainer_params.check_val_every_n_epoch=2',
            'train_wrapper.args.scheduler_spec={name: StepLR, args: {step_size: 10, gamma: 0.5}, interval: step}']
    assert run_py(save_root, '--config', DIGITS, '--name', 'every2', *args) == 0
    with open(save_root / 'every2' / 'metrics.csv') as f:
        assert [int(r['epoch']) for r in csv.DictReader(f) if r['val/acc']] == [1, 3]
    state = torch.load(save_root / 'every2' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['optimizer_states'][0]['param_groups'][0]['lr'] == pytest.approx(3e-3 * 0.5 ** (160 // 10))


def test_resume_continues_in_place(save_root: Path) -> None:
    assert run_py(save_root, '--config', DIGITS, '--name', 'resumed', 'trainer_params.max_epochs=2') == 0
    assert run_py(save_root, '--resume', str(save_root / 'resumed'), 'trainer_params.max_epochs=4') == 0
    assert [m[1] + '/' + m[2] for m in epoch_lines(save_root / 'resumed')] == ['1/2', '2/2', '3/4', '4/4']
    assert torch.load(save_root / 'resumed' / 'ckpt' / 'last.ckpt', weights_only=True)['global_step'] == 160
