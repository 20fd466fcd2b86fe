"""The preflight, both entry points: every problem the first training and validation step would
hit is one line naming the config key, exit status 2, before the experiment folder exists; both
entry points refuse the same values with the same line; --dry-run runs those steps and creates
nothing; an error once a run is under way is one line, keeps the last good checkpoint, and
--resume continues from it."""
from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from conftest import DIGITS, ROOT, RUNNERS, run_pl, snapshot
from utils import DATASETS, WRAPPERS

FAST = ['trainer_params.max_epochs=1', 'trainer_params.limit_train_batches=2', 'trainer_params.limit_val_batches=2']
o = "override '{}': "

# (override, the start of the error line after 'error: ', a part of the cause). The same line
# is expected from train.py and train_pl.py.
CASES = [
    # values a constructor refuses
    ('data_module.args.batch_size=0', o + 'data_module.args.batch_size: building the data module failed: ',
     'ValueError: batch_size must be a positive integer, got 0'),
    ('train_wrapper.args.optim_spec.args.lr=-0.1', o + 'train_wrapper.args.optim_spec.args.lr: building the '
     'optimizer and scheduler failed: ', 'ValueError: Invalid learning rate: -0.1'),
    ('train_wrapper.args.scheduler_spec={name: StepLR}', o + 'train_wrapper.args.scheduler_spec: building the '
     'optimizer and scheduler failed: ', "missing 1 required positional argument: 'step_size'"),
    ('data_module.args.train.args.split=trian', o + 'data_module.args.train.args.split: building the data loaders '
     'failed: ', "ValueError: split must be one of ('train', 'val', 'test'), got 'trian'"),
    # values that fail only when the first step runs
    ('train_wrapper.args.scheduler_spec.args.T_max=0', o + 'train_wrapper.args.scheduler_spec: stepping the '
     'scheduler failed: ', 'ZeroDivisionError: integer modulo by zero (with T_max=0)'),
    ('train_wrapper.args.target_key=lbl', o + 'train_wrapper.args.target_key: the first validation step failed: ',
     "KeyError: 'lbl' (batch: image (32, 1, 8, 8) float32, label (32,) int64; model 'mlp' -> (32, 10) float32)"),
    ('train_wrapper.args.model_spec.args.out_dim=5', o + 'train_wrapper.args.model_spec.args.out_dim: the first '
     'training step failed: IndexError: Target ', "model 'mlp' -> (32, 5) float32)"),
    ('data_module.args.num_classes=5', o + 'data_module.args.num_classes: the first training step failed: '
     'IndexError: Target ', "model 'mlp' -> (32, 5) float32)"),   # out_dim: ${data_module.args.num_classes}
    ('train_wrapper.args.model_spec.args.in_dim=32', o + 'train_wrapper.args.model_spec: the first training step '
     'failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x64 and 32x512)', "with in_dim=32"),
    # names a monitor must find among the logged ones
    ('checkpoint.monitor=val/accc', o + "checkpoint.monitor: 'val/accc' is never logged (did you mean 'val/acc'?); ",
     'logged: train/loss, val/acc, val/loss, val/top3'),
    ('train_wrapper.args.scheduler_spec={name: ReduceLROnPlateau, monitor: val/los}',
     o + "train_wrapper.args.scheduler_spec.monitor: 'val/los' is never logged (did you mean 'val/loss' ", ''),
    # values of the loop both entry points run
    ('trainer_params.max_epochs=-3', o + 'trainer_params.max_epochs: expected an integer >= -1 (-1: no limit), '
     'got -3', ''),
    ('trainer_params.max_steps=-5', o + 'trainer_params.max_steps: expected an integer >= -1', ''),
    ('trainer_params.accumulate_grad_batches=0', o + 'trainer_params.accumulate_grad_batches: expected an integer '
     '>= 1, got 0', ''),
    ('trainer_params.log_every_n_steps=0', o + 'trainer_params.log_every_n_steps: expected an integer >= 1, got 0',
     ''),
    ('trainer_params.check_val_every_n_epoch=0', o + 'trainer_params.check_val_every_n_epoch: expected an integer '
     '>= 1', ''),
    ('trainer_params.limit_train_batches=1.5', o + 'trainer_params.limit_train_batches: expected a number of '
     'batches >= 0 or a fraction from 0.0 to 1.0, got 1.5', ''),
    ('trainer_params.gradient_clip_val=-1', o + 'trainer_params.gradient_clip_val: expected a number >= 0', ''),
    ('checkpoint.save_top_k=-2', o + 'checkpoint.save_top_k: expected an integer >= -1 (-1: keep all), got -2', ''),
    ('seed=4294967296', o + 'seed: expected an integer from 0 to 4294967295, got 4294967296', ''),
]


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_both_entry_points_refuse_a_bad_value_with_the_same_line_before_creating_anything(
        case: tuple, save_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    override, start, cause = case
    lines = {}
    for entry, runner in RUNNERS.items():
        assert runner(save_root, '--config', 'configs/digits.yaml', override) == 2, entry
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and 'Traceback' not in err, err
        lines[entry] = err
        assert not save_root.exists()
    assert lines['train.py'] == lines['train_pl.py']
    assert lines['train.py'].startswith('error: ' + start.replace('{}', override)), lines['train.py']
    assert cause in lines['train.py']


def test_the_preflight_table_covers_the_families() -> None:
    assert len(CASES) >= 19


# ------------------------------------------------------------------ a wrapper of the user's own

class TinyWrapper(__import__('pytorch_lightning').LightningModule):
    """A LightningModule written by a user, logging under its own names."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.net, self.lr = nn.Linear(64, 10), lr

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.net(batch['image'].flatten(1)), batch['label'])
        self.log('train/loss', loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        right = self.net(batch['image'].flatten(1)).argmax(1) == batch['label']
        self.log('val/accuracy', right.float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@pytest.mark.parametrize('overrides, expected', [
    ([], "configs/digits.yaml: checkpoint.monitor: 'val/acc' is never logged (did you mean 'val/accuracy'?); "
         'logged: train/loss, val/accuracy'),
    (['train_wrapper.args.lr=-1.0'], "override 'train_wrapper.args.lr=-1.0': train_wrapper.args.lr: building the "
                                     'optimizer and scheduler failed: ValueError: Invalid learning rate: -1.0'),
    (['train_wrapper={name: gan, args: {generator_spec: {name: gan_generator}, discriminator_spec: '
      '{name: gan_discriminator}, g_optim_spec: {name: Adam}, d_optim_spec: {name: Adam}, image_key: img}}',
      'checkpoint.monitor=null'],
     "override 'train_wrapper={name: gan, args: {generator_spec: {name: gan_generator}, discriminator_spec: {name: "
     "gan_discriminator}, g_optim_spec: {name: Adam}, d_optim_spec: {name: Adam}, image_key: img}}': "
     "train_wrapper.args.image_key: the first training step failed: KeyError: 'img' (batch: image (32, 1, 8, 8) "
     'float32, label (32,) int64)'),
], ids=['own-wrapper-monitor', 'own-wrapper-lr', 'gan-image-key'])
def test_train_pl_runs_the_first_steps_of_any_wrapper(overrides: list, expected: str, save_root: Path,
                                                      capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setitem(WRAPPERS._classes, 'tiny_user', TinyWrapper)
    assert run_pl(save_root, '--config', 'configs/digits.yaml', 'train_wrapper={name: tiny_user}', *overrides) == 2
    err = capsys.readouterr().err
    assert err == f'error: {expected}\n'
    assert not save_root.exists()


# --------------------------------------------------------------------------------------- dry run

@pytest.mark.parametrize('entry', RUNNERS)
def test_dry_run_prints_the_shapes_and_creates_nothing(entry: str, save_root: Path, capsys: pytest.CaptureFixture,
                                                       tmp_path: Path) -> None:
    (save_root / 'digits').mkdir(parents=True)   # a name in use does not matter: nothing is created
    before = snapshot(save_root)
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--dry-run') == 0
    out = capsys.readouterr().out
    assert ('dry run: built everything and ran one training and one validation batch; nothing was created\n'
            '  batch: image (32, 1, 8, 8) float32, label (32,) int64\n'
            "  prediction of model 'mlp': (32, 10) float32\n"
            "  loss terms of loss 'ce': loss () float32 = ") in out
    assert '  logged: train/loss, val/acc, val/loss, val/top3\n' in out
    assert snapshot(save_root) == before and [p.name for p in save_root.iterdir()] == ['digits']


# ------------------------------------------------------------------------ errors once under way

class FlakyDigits(DATASETS.get('digits')):
    """Digits whose reads fail from epoch `fail_at_epoch` on (it counts the epochs in log.txt)."""

    def __init__(self, split: str = 'train', log: str = '', fail_at_epoch: int = 0) -> None:
        super().__init__(split)
        self.log, self.fail_at_epoch = Path(log), fail_at_epoch

    def __getitem__(self, index: object) -> dict:
        done = self.log.read_text().count('\nepoch ') if self.log.is_file() else 0
        if self.fail_at_epoch and done + 1 >= self.fail_at_epoch:
            raise RuntimeError('reading the sample files failed')
        return super().__getitem__(index)


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_dataset_that_raises_in_epoch_3_stops_with_one_line_and_resume_continues(
        entry: str, save_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASETS._classes, 'flaky_digits', FlakyDigits)
    exp = save_root / 'x'
    train = f'data_module.args.train={{name: flaky_digits, args: {{log: {exp}/log.txt, fail_at_epoch: 3}}}}'
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'x', train, *FAST,
                          'trainer_params.max_epochs=4') == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert err.splitlines()[-1] + '\n' == (
        f"error: run stopped: data_module.args.train: RuntimeError: reading the sample files failed; the "
        f'last good checkpoint {exp}/ckpt/last.ckpt (epoch 2) is kept; continue with --resume {exp} '
        f'(--debug shows the traceback)\n')
    assert torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['epoch'] == 1
    assert not (exp / 'result.yaml').exists()
    assert RUNNERS[entry](save_root, '--resume', str(exp), 'data_module.args.train.args.fail_at_epoch=0') == 0
    assert torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['epoch'] == 3
    assert (exp / 'result.yaml').is_file()


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_full_disk_stops_with_one_line_keeps_the_last_checkpoint_and_resume_continues(
        entry: str, save_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    exp, saves, real_save = save_root / 'x', [], torch.save

    def disk_fills_after_the_first_epoch(obj: object, f: object, *args: object, **kwargs: object) -> None:
        saves.append(f)
        if len(saves) > 2:   # epoch 1 writes its best and its last checkpoint, then the disk is full
            raise OSError(errno.ENOSPC, 'No space left on device')
        real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', disk_fills_after_the_first_epoch)
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'x', *FAST, 'trainer_params.max_epochs=3') == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert re.fullmatch(   # the file system and its space left: those of the test's tmp folder
        rf'error: run stopped: no space left on the file system of {re.escape(str(exp))} \(.+ mounted on .+, '
        rf'[\d.]+ MB free\); the last good checkpoint {re.escape(str(exp))}/ckpt/last\.ckpt \(epoch 1\) is kept; '
        rf'continue with --resume {re.escape(str(exp))} \(--debug shows the traceback\)', err.splitlines()[-1])
    assert torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['epoch'] == 0
    monkeypatch.setattr(torch, 'save', real_save)   # space was freed
    assert RUNNERS[entry](save_root, '--resume', str(exp)) == 0
    assert torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['epoch'] == 2
    assert (exp / 'result.yaml').is_file()


@pytest.fixture(scope='module')
def no_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished experiment whose config has no test split."""
    save = tmp_path_factory.mktemp('runs')
    assert RUNNERS['train.py'](save, '--config', DIGITS, '--name', 'x', *FAST, 'data_module.args.test=null') == 0
    return save / 'x'


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('flags, expected', [
    (['--test', '{exp}'], "--test {exp}: the experiment's data module has no test split (data_module.args.test "
                          "is not set); add one as an override: data_module.args.test='{{name: ..., args: ...}}'"),
    (['--predict', '{exp}', '--data', '{{name: digits, args: {{split: nope}}}}'],
     "--predict {exp} --data {{name: digits, args: {{split: nope}}}}: building the predict data failed: ValueError: "
     "split must be one of ('train', 'val', 'test'), got 'nope'"),
    (['--predict', '{exp}', '--data', '{empty}'], '--predict {exp} --data {empty}: building the predict data failed: '
                                                  'FileNotFoundError: no image files (.png, .jpg, .jpeg, .bmp, .gif) '
                                                  'in {empty}'),
    (['--predict', '{exp}', '--data', '{missing}/'], "--data {missing}/: no such folder ({missing}); expected a "
                                                     "folder of images or a dataset spec such as '{{name: digits, "
                                                     "args: {{split: test}}}}'"),
], ids=['test-without-test-split', 'predict-missing-split', 'predict-empty-folder', 'predict-missing-folder'])
def test_evaluating_on_data_that_is_not_there_is_one_line_and_changes_nothing(
        entry: str, flags: list, expected: str, no_test_split: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / 'empty'
    empty.mkdir()
    before = snapshot(no_test_split)
    fill = {'exp': no_test_split, 'empty': empty, 'missing': tmp_path / 'my_digits'}
    assert RUNNERS[entry](tmp_path, *[f.format(**fill) for f in flags]) == 2
    assert capsys.readouterr().err == f'error: {expected.format(**fill)}\n'
    assert snapshot(no_test_split) == before


@pytest.mark.parametrize('entry', RUNNERS)
def test_the_missing_test_split_given_as_an_override_is_used(entry: str, no_test_split: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert RUNNERS[entry](tmp_path, '--test', str(no_test_split),
                          'data_module.args.test={name: digits, args: {split: test}}') == 0
    assert capsys.readouterr().out.startswith('test (')
    tests = yaml.safe_load((no_test_split / 'test.yaml').read_text())
    assert all(sorted(values) == ['test/acc', 'test/loss', 'test/top3'] for values in tests.values())
