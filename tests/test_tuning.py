"""--find-lr and --find-batch-size (issue 26, point 2): Lightning's Tuner on a run's config; the
suggestion printed with the config key that sets it, the learning-rate curve saved as a PNG, and
no experiment folder created. train.py and bad input: one line.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from conftest import DIGITS, ROOT, registering, run_pl, run_py
from utils import WRAPPERS

FAST = ['train_wrapper.args.model_spec.args.hidden=[16]']
PNG = b'\x89PNG\r\n\x1a\n'


def test_find_lr_suggests_a_rate_names_its_key_draws_the_curve_and_creates_no_folder(save_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    curve = tmp_path / 'lr.png'
    assert run_pl(save_root, '--config', DIGITS, '--find-lr', '--out', str(curve)) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('--find-lr: ')]
    assert len(line) == 1, line
    found = re.fullmatch(r'--find-lr: suggested learning rate (\S+) \(the steepest fall of the loss over \d+ rates '
                         r'from 1e-08 to 1\); set it with train_wrapper\.args\.optim_spec\.args\.lr=(\S+); curve: (.+)',
                         line[0])
    assert found and found[1] == found[2] and Path(found[3]).resolve() == curve.resolve(), line
    assert curve.read_bytes().startswith(PNG)
    assert not save_root.exists() and not (ROOT / 'lr_find.png').exists()
    # Lightning's suggestion (the steepest fall of a noisy curve) is its own; it lies in the range tried.
    assert 1e-8 <= float(found[1]) <= 1


def test_find_batch_size_names_the_largest_batch_and_the_key(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_pl(save_root, '--config', DIGITS, '--find-batch-size', *FAST) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('--find-batch-size: ')]
    found = re.fullmatch(r'--find-batch-size: the largest batch per process that fits: (\d+) \(.*\); set it with '
                         r'data_module\.args\.batch_size=(\d+)', line[0])
    size = int(found[1])
    # On the CPU nothing runs out of memory: it doubles from the config's 32 to the training set's 1,257.
    assert found[1] == found[2] and size >= 1024 and size & (size - 1) == 0
    assert not save_root.exists()


class OwnRate(pl.LightningModule):
    """A module taking its learning rate as an argument, as the Lightning docs write one."""

    def __init__(self, learning_rate: float = 1e-3) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch['image']), batch['label'])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


def test_a_module_s_own_rate_argument_is_the_key_named(save_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    with registering((WRAPPERS, 'own_rate', OwnRate)):
        assert run_pl(save_root, '--config', DIGITS, '--find-lr', '--out', str(tmp_path / 'lr.png'),
                      'train_wrapper={name: own_rate}') == 0
    out = capsys.readouterr().out
    assert re.search(r'; set it with train_wrapper\.args\.learning_rate=\S+; curve: ', out), out


@pytest.mark.parametrize('args, problem', [
    (['--find-lr'], '--find-lr and --find-batch-size tune a config: give --config (and overrides), e.g. '
                    '--config configs/digits.yaml'),
    (['--config', DIGITS, '--find-lr', '--out', '/no/such/folder/lr.png'],
     '--find-lr --out /no/such/folder/lr.png: the folder /no/such/folder does not exist'),
    (['--config', DIGITS, '--find-batch-size', 'data_module.args.batch_sise=8'],
     "override 'data_module.args.batch_sise=8': data_module.args.batch_sise: data module 'default' does not take "
     "'batch_sise' (did you mean 'batch_size'"),
])
def test_bad_tuning_input_is_one_line(args: list[str], problem: str, save_root: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    assert run_pl(save_root, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {problem}') and err.count('\n') == 1, err
    assert not save_root.exists()


@pytest.mark.parametrize('flag', ['--find-lr', '--find-batch-size'])
def test_train_py_points_to_train_pl(flag: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_py(save_root, '--config', DIGITS, flag) == 2
    assert capsys.readouterr().err == (f"error: {flag}: Lightning's Tuner does it, for the same configs: run it with "
                                       'train_pl.py\n')
    assert not save_root.exists()
