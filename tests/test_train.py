"""train.py: the same configs and experiment folder as train_pl.py, without Lightning."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DIGITS, EPOCH_LINE, QUIET, ROOT, RUNNERS, evaluate, run_pl, run_py


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
    ('trainer_params.precision=8-mixed', "trainer_params.precision: expected one of '32-true', 32, '32', 'bf16-mixed', "
                                         "'bf16', '16-mixed', 16, '16', '64-true', 64, '64', 'bf16-true', '16-true', "
                                         "got str '8-mixed'"),
    ('trainer_params.precision=transformer-engine', "trainer_params.precision: 'transformer-engine' is Lightning's "
                                                    "plugin for NVIDIA's Transformer Engine; use train_pl.py for it"),
    ('checkpoint.auto_insert_metric_name=false', "checkpoint.auto_insert_metric_name: train.py (use train_pl.py for "
                                                 "other ModelCheckpoint arguments) does not take "
                                                 "'auto_insert_metric_name'; it takes: monitor, mode, save_top_k, "
                                                 'save_last, every_n_epochs, filename'),
    ('train_wrapper.name=gan', "train_wrapper.name: train.py runs the 'base' wrapper only, not 'gan'; "
                               'use train_pl.py for it'),
    ('callbacks=[{name: x}]', "callbacks.0: train.py runs only the 'ema' and 'EarlyStopping' callbacks, not 'x'; "
                              'use train_pl.py for other Lightning callbacks'),
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


# ------------------------------------------- the same results as train_pl.py: precision, compile, EarlyStopping

def epoch_values(exp: Path) -> list[str]:
    """log.txt's epoch lines: the epoch and the train loss (Lightning's line repeats the last validation's values
    in an epoch without one)."""
    return [line.split('  ')[:2] for line in (exp / 'log.txt').read_text().splitlines() if line.startswith('epoch')]


def assert_same_run(save_root: Path, *overrides: str) -> tuple[dict, dict]:
    """Both entry points on digits with `overrides`: the same epoch lines' values, bit-identical
    weights; returns both last.ckpt states."""
    assert run_py(save_root, '--config', DIGITS, '--name', 'plain', *overrides) == 0
    assert run_pl(save_root, '--config', DIGITS, '--name', 'lightning', *overrides) == 0
    assert epoch_values(save_root / 'plain') == epoch_values(save_root / 'lightning')
    a, b = (torch.load(save_root / name / 'ckpt' / 'last.ckpt', weights_only=True) for name in ('plain', 'lightning'))
    assert list(a['state_dict']) == list(b['state_dict'])
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])
    return a, b


SHORT = ['trainer_params.max_epochs=2', 'trainer_params.limit_train_batches=10']


@pytest.mark.parametrize('precision, dtype', [('bf16-mixed', torch.float32), ('64-true', torch.float64),
                                              ('bf16-true', torch.bfloat16), (16, torch.float32)])
def test_each_precision_gives_bit_identical_weights_in_both_entry_points(
        precision: Any, dtype: torch.dtype, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    # Lightning's plugins: autocast for *-mixed (16-mixed is bf16-mixed on the CPU, with a warning), the
    # module and its float inputs converted for *-true.
    a, _ = assert_same_run(save_root, f'trainer_params.precision={precision}', *SHORT)
    assert {v.dtype for v in a['state_dict'].values()} == {dtype}
    warned = "warning: trainer_params.precision: '16-mixed' on the CPU: AMP with float16 is not supported there; " \
             "using 'bf16-mixed' instead (as Lightning does)"
    assert (warned in capsys.readouterr().err) == (precision == 16)


def test_compile_gives_bit_identical_weights_in_both_entry_points(save_root: Path) -> None:
    from torch._dynamo.utils import counters
    counters.clear()
    assert_same_run(save_root, 'train_wrapper.args.compile=true', 'trainer_params.max_epochs=1',
                    'trainer_params.limit_train_batches=5')
    assert counters['stats']['unique_graphs'] >= 2   # each entry point compiled the model's forward


EARLY = 'callbacks=[{name: EarlyStopping, args: {monitor: val/loss, patience: 2, min_delta: 0.002}}]'
EARLY_KEY = "EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}"


@pytest.mark.parametrize('overrides, epochs', [
    ([], 8),                                                  # checked after every epoch, its validation done
    (['trainer_params.check_val_every_n_epoch=2', 'callbacks.0.args.patience=1'], 18),   # after each validation
    (['callbacks.0.args.stopping_threshold=0.2'], 4),         # stopped by the threshold
])
def test_early_stopping_stops_both_entry_points_at_the_same_epoch(overrides: list[str], epochs: int,
                                                                  save_root: Path) -> None:
    a, b = assert_same_run(save_root, 'trainer_params.max_epochs=20', EARLY, *overrides)
    assert len(epoch_values(save_root / 'plain')) == epochs < 20
    assert a['epoch'] == b['epoch'] == epochs - 1
    # The callback's state, under Lightning's key, as Lightning's EarlyStopping keeps it.
    assert set(a['callbacks'][EARLY_KEY]) == set(b['callbacks'][EARLY_KEY])
    assert a['callbacks'][EARLY_KEY] == b['callbacks'][EARLY_KEY]   # best_score: equal 0-d tensors
    assert (save_root / 'plain' / 'result.yaml').is_file()


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_early_stopping_on_a_metric_not_there_yet_is_the_same_line(entry: str, save_root: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    # Checked after every epoch (check_on_train_epoch_end), but validated every second one: Lightning's strict error.
    assert RUNNERS[entry](save_root, '--config', DIGITS, EARLY, 'trainer_params.check_val_every_n_epoch=2',
                          'callbacks.0.args.check_on_train_epoch_end=true') == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        'error: run stopped: callbacks.0: RuntimeError: Early stopping conditioned on metric `val/loss` which is not '
        'available. Pass in or modify your `EarlyStopping` callback to use any of the following: `train/loss_step`, '
        '`train/loss`; no checkpoint was written')


def test_early_stopping_state_carries_over_a_resume(save_root: Path) -> None:
    # Interrupted after 5 epochs, resumed: it stops where the uninterrupted run stopped, with its weights.
    assert run_py(save_root, '--config', DIGITS, '--name', 'whole', 'trainer_params.max_epochs=20', EARLY) == 0
    assert run_py(save_root, '--config', DIGITS, '--name', 'parts', 'trainer_params.max_epochs=5', EARLY) == 0
    assert run_py(save_root, '--resume', str(save_root / 'parts'), 'trainer_params.max_epochs=20') == 0
    assert len(epoch_lines(save_root / 'parts')) == len(epoch_lines(save_root / 'whole')) == 8
    a, b = (torch.load(save_root / name / 'ckpt' / 'last.ckpt', weights_only=True) for name in ('whole', 'parts'))
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.floats(0, 1, width=32), st.just(float('nan'))), min_size=1, max_size=12),
       mode=st.sampled_from(['min', 'max']), patience=st.integers(1, 3), min_delta=st.sampled_from([0.0, 0.05]),
       threshold=st.sampled_from([None, 0.5]))
def test_early_stopping_decides_as_lightnings_own(values: list[float], mode: str, patience: int, min_delta: float,
                                                  threshold: Optional[float]) -> None:
    from pytorch_lightning.callbacks import EarlyStopping as LightningEarlyStopping

    from lightyaml.train.early_stopping import EarlyStopping, EarlyStoppingParams
    args = dict(monitor='m', mode=mode, patience=patience, min_delta=min_delta, stopping_threshold=threshold)
    ours, theirs = EarlyStopping(EarlyStoppingParams(**args), 1), LightningEarlyStopping(**args)
    for epoch, value in enumerate(values):
        their_stop, their_reason = theirs._evaluate_stopping_criteria(torch.tensor(value, dtype=torch.float32))
        assert ours.check(epoch, True, {'m': value}, master=True) == their_stop
        assert (ours.wait_count, ours.reason, ours.best_score) == (theirs.wait_count, theirs.stopping_reason.value,
                                                                   theirs.best_score)
        if their_stop:
            assert ours.message == their_reason
            break
    assert ours.state_key == theirs.state_key
