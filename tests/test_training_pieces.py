"""Optimizers and schedulers by name, warm-up, and the --gpu flag (device count mocked)."""
from __future__ import annotations

import os

import pytest
import torch

from lightyaml.launch.devices import parse_gpu_flag, select_cuda_devices
from lightyaml.train.optim import make_optimizer, make_scheduler
from utils import ConfigError


def lrs(spec: dict, steps: int) -> list[float]:
    optimizer = make_optimizer({'name': 'SGD', 'args': {'lr': 1.0}}, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = make_scheduler(spec, optimizer)['scheduler']
    seen = []
    for _ in range(steps):
        seen.append(round(optimizer.param_groups[0]['lr'], 6))
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_ramps_linearly_then_hands_over_to_the_named_scheduler() -> None:
    spec = {'name': 'StepLR', 'args': {'step_size': 2, 'gamma': 0.5}, 'interval': 'step', 'warmup': 3}
    assert lrs(spec, 8) == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_linear_lr_alone_is_a_warmup() -> None:
    assert lrs({'name': 'LinearLR', 'args': {'start_factor': 0.5, 'total_iters': 2}}, 4) == [0.5, 0.75, 1.0, 1.0]


def test_scheduler_config_carries_interval_frequency_and_monitor() -> None:
    optimizer = make_optimizer({'name': 'Adam', 'args': {'lr': 1e-3}}, [torch.nn.Parameter(torch.zeros(1))])
    config = make_scheduler({'name': 'ReduceLROnPlateau', 'args': {'patience': 0}, 'monitor': 'val/loss'}, optimizer)
    assert isinstance(config['scheduler'], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert {k: v for k, v in config.items() if k != 'scheduler'} == {'interval': 'epoch', 'frequency': 1,
                                                                    'monitor': 'val/loss'}


def test_reduce_on_plateau_trains_through_lightning(tmp_path) -> None:
    from conftest import ROOT, run_pl
    # threshold 10: no epoch counts as an improvement, so every epoch-end step cuts the rate.
    args = ['train_wrapper.args.scheduler_spec={name: ReduceLROnPlateau, args: {patience: 0, factor: 0.1, '
            'threshold: 10}, monitor: val/loss}', 'trainer_params.max_epochs=3']
    assert run_pl(tmp_path, '--config', str(ROOT / 'configs' / 'digits.yaml'), *args) == 0
    ckpt = torch.load(tmp_path / 'digits' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert ckpt['epoch'] == 2
    # last.ckpt is written at the end of epoch 3, before that epoch's plateau step: two cuts so far.
    assert ckpt['optimizer_states'][0]['param_groups'][0]['lr'] == pytest.approx(3e-3 * 0.1 ** 2)


def test_gpu_flag_selects_exactly_those_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    assert parse_gpu_flag('1,2') == [1, 2] and parse_gpu_flag('cpu') == 'cpu'
    assert select_cuda_devices([1, 2], device_count=lambda: 2) == 2
    assert os.environ['CUDA_VISIBLE_DEVICES'] == '1,2'
    with pytest.raises(ConfigError, match=r'^--gpu 1,2: only 1 of these CUDA devices exist here$'):
        select_cuda_devices([1, 2], device_count=lambda: 1)


def test_gpu_flag_makes_lightning_use_ddp_over_the_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    import train_pl
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert train_pl.device_params({'max_epochs': 1}, '0,1', None) == {
        'max_epochs': 1, 'accelerator': 'gpu', 'devices': 2, 'strategy': 'ddp'}
    assert train_pl.device_params({'strategy': 'ddp_spawn'}, '0,1', 2)['strategy'] == 'ddp_spawn'
    assert train_pl.device_params({}, '0', 2) == {'num_nodes': 2, 'accelerator': 'gpu', 'devices': 1,
                                                  'strategy': 'ddp'}
    assert train_pl.device_params({'devices': 2}, 'cpu', None) == {'devices': 2, 'accelerator': 'cpu'}
