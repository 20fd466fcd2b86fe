"""Learning rates scaled with the global batch (issue 26, point 3): the config's
`scale_lr: {base_batch: B}` multiplies every optimizer's (and scheduler's) learning rate by
processes x batch size x accumulated batches / B, the same in both entry points, recorded in
config.yaml and printed once; a resumed run keeps its scaled rates.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from conftest import DIGITS, QUIET, ROOT, RUNNERS, registering, run_pl
from utils import DATA_MODULES, WRAPPERS

FAST = ['trainer_params.max_epochs=2', 'train_wrapper.args.model_spec.args.hidden=[16]']
SCALED = ['scale_lr={base_batch: 16}']   # digits' batch is 32: x2 on one process


def weights(exp: Path) -> dict[str, torch.Tensor]:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    first, second = weights(a)['state_dict'], weights(b)['state_dict']
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize('entry', RUNNERS)
def test_scaling_is_the_same_as_giving_the_scaled_rate(entry: str, save_root: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'scaled', *FAST, *SCALED) == 0
    out = capsys.readouterr().out
    assert out.count('scale_lr: ') == 1 and ('scale_lr: learning rates x2: a global batch of 32 (1 x batch 32 x 1: '
                                             'processes x batch size x accumulated) over base_batch 16') in out
    saved = yaml.safe_load((save_root / 'scaled' / 'config.yaml').read_text())
    assert saved['scale_lr'] == {'base_batch': 16, 'factor': 2.0}
    state = weights(save_root / 'scaled')
    assert state['optimizer_states'][0]['param_groups'][0]['initial_lr'] == 2 * 3e-3
    assert state['lr_schedulers'][0]['base_lrs'] == [2 * 3e-3]
    # Bit-identical to the same run given the doubled rate (6e-3) and no scale_lr.
    doubled = 'train_wrapper.args.optim_spec.args.lr=6e-3'
    assert run(save_root, '--config', DIGITS, '--name', 'given', *FAST, doubled) == 0
    assert same_weights(save_root / 'scaled', save_root / 'given')


def test_both_entry_points_scale_alike_and_a_resume_keeps_the_scaled_rates(save_root: Path) -> None:
    for entry, run in RUNNERS.items():
        assert run(save_root, '--config', DIGITS, '--name', f'whole-{entry}', *FAST, *SCALED) == 0
        assert run(save_root, '--config', DIGITS, '--name', f'part-{entry}', *FAST, *SCALED,
                   'trainer_params.max_epochs=1') == 0
        assert run(save_root, '--resume', str(save_root / f'part-{entry}'), 'trainer_params.max_epochs=2') == 0
        assert same_weights(save_root / f'whole-{entry}', save_root / f'part-{entry}')
    assert same_weights(save_root / 'whole-train.py', save_root / 'whole-train_pl.py')


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_new_rate_given_on_resume_is_scaled_too(entry: str, save_root: Path) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'x', *FAST, *SCALED, 'trainer_params.max_epochs=1') == 0
    assert run(save_root, '--resume', str(save_root / 'x'), 'trainer_params.max_epochs=2',
               'train_wrapper.args.optim_spec.args.lr=1e-3') == 0
    state = weights(save_root / 'x')
    assert state['optimizer_states'][0]['param_groups'][0]['initial_lr'] == 2 * 1e-3
    assert state['lr_schedulers'][0]['base_lrs'] == [2 * 1e-3]


@pytest.mark.parametrize('entry', RUNNERS)
def test_accumulated_batches_count(entry: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'acc', *FAST, 'scale_lr={base_batch: 256}',
                          'trainer_params.accumulate_grad_batches=2', 'trainer_params.max_epochs=1') == 0
    assert 'learning rates x0.25: a global batch of 64 (1 x batch 32 x 2' in capsys.readouterr().out
    assert weights(save_root / 'acc')['optimizer_states'][0]['param_groups'][0]['initial_lr'] == 0.25 * 3e-3


class OwnOptimizer(pl.LightningModule):
    """A module with its own optimizer and scheduler, fed a data module whose batch size is its own."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch['image'].flatten(1)), batch['label'])

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {'optimizer': optimizer, 'lr_scheduler': torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)}


class DigitsOwnBatch(pl.LightningDataModule):
    def __init__(self, batch_size: int = 64, say_batch: bool = True) -> None:
        super().__init__()
        if say_batch:
            self.batch_size = batch_size
        self.loader_batch = batch_size

    def train_dataloader(self) -> DataLoader:
        from datasets.digits import Digits
        return DataLoader(Digits('train'), batch_size=self.loader_batch, shuffle=True)


def test_a_module_s_own_optimizer_and_a_data_module_s_own_batch_size(save_root: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / 'own.yaml'
    config.write_text(yaml.safe_dump({
        'seed': 0, 'data_module': {'name': 'digits_own_batch'}, 'train_wrapper': {'name': 'own_optimizer'},
        'trainer_params': {'max_epochs': 1, 'accelerator': 'cpu', 'limit_train_batches': 2,
                           'enable_model_summary': False}, 'scale_lr': {'base_batch': 256}}))
    with registering((WRAPPERS, 'own_optimizer', OwnOptimizer), (DATA_MODULES, 'digits_own_batch', DigitsOwnBatch)):
        assert run_pl(save_root, '--config', str(config), '--name', 'own') == 0
        assert 'learning rates x0.25: a global batch of 64 (1 x batch 64 x 1' in capsys.readouterr().out
        state = weights(save_root / 'own')
        assert state['optimizer_states'][0]['param_groups'][0]['lr'] == 0.25 * 0.1
        assert state['lr_schedulers'][0]['base_lrs'] == [0.25 * 0.1]
        assert run_pl(save_root, '--config', str(config), '--name', 'unsaid', 'data_module.args.say_batch=false') == 2
    assert not (save_root / 'unsaid').exists()
    assert capsys.readouterr().err == (
        f'error: {config}: scale_lr: cannot tell the batch size per process to scale the learning rate by; '
        'give data_module.args.batch_size\n')


BAD = {
    'scale_lr={base_batch: 0}': "scale_lr.base_batch: expected the batch size the learning rates are given for, a "
                                'whole number >= 1, got 0',
    'scale_lr={}': "scale_lr: needs 'base_batch', e.g. {base_batch: 256}",
    'scale_lr={base_bach: 256}': "scale_lr: needs 'base_batch', e.g. {base_batch: 256}",
    'scale_lr=256': 'scale_lr: expected a mapping such as {base_batch: 256}, got int 256',
}


@pytest.mark.parametrize('override', BAD)
def test_a_bad_scale_lr_is_one_line(override: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    for run in RUNNERS.values():
        assert run(save_root, '--config', DIGITS, *FAST, override) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: override '{override}': {BAD[override]}") and 'Traceback' not in err, err
    assert not save_root.exists()


@pytest.mark.slow
@pytest.mark.parametrize('entry', RUNNERS)
def test_two_processes_double_the_global_batch(entry: str, tmp_path: Path) -> None:
    ddp = ['trainer_params.strategy=ddp'] if entry == 'train_pl.py' else []   # train.py: DDP for devices > 1
    done = subprocess.run([sys.executable, entry, '--config', DIGITS, '--name', 'ddp', '--save-root', str(tmp_path),
                           *FAST, *SCALED, 'trainer_params.max_epochs=1', 'trainer_params.accelerator=cpu',
                           'trainer_params.devices=2', *ddp, *QUIET],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('scale_lr: learning rates x4: a global batch of 64 (2 x batch 32 x 1') == 1   # rank 0
    assert yaml.safe_load((tmp_path / 'ddp' / 'config.yaml').read_text())['scale_lr']['factor'] == 4.0
    assert weights(tmp_path / 'ddp')['optimizer_states'][0]['param_groups'][0]['initial_lr'] == 4 * 3e-3
