"""Exact resume, reruns, fine-tuning, non-finite losses and atomic checkpoints, both entry points."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, QUIET, ROOT, RUNNERS, run_pl

PLATEAU = ('train_wrapper.args.scheduler_spec={name: ReduceLROnPlateau, args: {patience: 0, factor: 0.5}, '
           'monitor: val/acc}')


def weights(exp: Path) -> dict[str, torch.Tensor]:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)['state_dict']


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), 'weights differ'


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('schedule', [[], [PLATEAU]], ids=['cosine', 'plateau'])
def test_stopping_after_an_epoch_and_resuming_is_bit_identical(entry: str, schedule: list[str],
                                                               save_root: Path) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'whole', 'trainer_params.max_epochs=4', *schedule) == 0
    assert run(save_root, '--config', DIGITS, '--name', 'halves', 'trainer_params.max_epochs=2', *schedule) == 0
    assert run(save_root, '--resume', str(save_root / 'halves'), 'trainer_params.max_epochs=4') == 0
    assert_bit_identical(save_root / 'whole', save_root / 'halves')
    # The second half appended to the same log, with a meaningful estimate (elapsed grows).
    log = (save_root / 'halves' / 'log.txt').read_text()
    assert sum(line.startswith('epoch ') for line in log.splitlines()) == 4 and 'resumed: ' in log


@pytest.mark.slow
@pytest.mark.parametrize('entry', RUNNERS)
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(entry: str, tmp_path: Path) -> None:
    # Killed anywhere (mid-epoch, mid-checkpoint), a run restarts the epoch from its last
    # checkpoint and still ends where an uninterrupted run does.
    args = ['--config', DIGITS, '--save-root', str(tmp_path), 'trainer_params.max_epochs=8',
            'train_wrapper.args.model_spec.name=lenet5', 'train_wrapper.args.model_spec.args={}',
            'data_module.args.batch_size=8', *QUIET]
    assert RUNNERS[entry](tmp_path, *args[:2], '--name', 'whole', *args[4:]) == 0
    exp, rng, kills = tmp_path / 'killed', random.Random(0), 0
    command = [sys.executable, entry, *args, '--name', 'killed']
    while True:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 3:
            deadline = time.monotonic() + 120
            while not (exp / 'ckpt' / 'last.ckpt').exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
        kills += 1
        torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)   # always readable
        command = [sys.executable, entry, '--resume', str(exp), '--save-root', str(tmp_path), *QUIET]
    assert kills == 3
    assert_bit_identical(tmp_path / 'whole', exp)


@pytest.mark.parametrize('entry', RUNNERS)
def test_rerunning_a_saved_config_reproduces_the_run_bit_for_bit(entry: str, save_root: Path) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'first', 'trainer_params.max_epochs=3',
               'trainer_params.deterministic=true', 'seed=null') == 0   # a drawn seed, saved in config.yaml
    saved = save_root / 'first' / 'config.yaml'
    assert run(save_root, '--config', str(saved), '--name', 'again') == 0
    assert_bit_identical(save_root / 'first', save_root / 'again')


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_new_learning_rate_given_on_resume_takes_effect(entry: str, save_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    run = RUNNERS[entry]
    constant = ['train_wrapper.args.scheduler_spec=null', 'trainer_params.max_epochs=1']
    assert run(save_root, '--config', DIGITS, '--name', 'lr', *constant) == 0
    assert run(save_root, '--resume', str(save_root / 'lr'), 'trainer_params.max_epochs=2',
               'train_wrapper.args.optim_spec.args.lr=1e-4') == 0
    assert 'resume: optimizer lr 0.003 -> 0.0001 (from the config)' in capsys.readouterr().out
    state = torch.load(save_root / 'lr' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['optimizer_states'][0]['param_groups'][0]['lr'] == pytest.approx(1e-4)
    assert '# ' in (save_root / 'lr' / 'config.yaml').read_text().splitlines()[1]   # the resume command


@pytest.mark.parametrize('entry', RUNNERS)
def test_init_from_takes_weights_only_and_lists_mismatched_shapes(entry: str, save_root: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'base', 'trainer_params.max_epochs=5') == 0
    assert run(save_root, '--config', DIGITS, '--name', 'tuned', '--init-from', str(save_root / 'base'),
               'trainer_params.max_epochs=1', 'train_wrapper.args.optim_spec.args.lr=1e-4') == 0
    first_epoch = (save_root / 'tuned' / 'log.txt').read_text().split('epoch 1/1')[1]
    assert float(first_epoch.split('val: acc ')[1].split()[0]) > 0.95   # started from trained weights
    state = torch.load(save_root / 'tuned' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['global_step'] == 40 and state['epoch'] == 0          # fresh counters
    assert run(save_root, '--config', DIGITS, '--name', 'wide', '--init-from', str(save_root / 'base'),
               'train_wrapper.args.model_spec.args.hidden=[256]') == 2
    last = save_root / 'base' / 'ckpt' / 'last.ckpt'
    assert capsys.readouterr().err == (
        f'error: --init-from {last}: shapes differ (checkpoint vs model): model.net.0.weight (512, 64) vs '
        f'(256, 64); model.net.0.bias (512,) vs (256,); model.net.3.weight (10, 512) vs (10, 256)\n')
    assert not (save_root / 'wide').exists()


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(entry: str, save_root: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    # From epoch 3 on the learning rate is multiplied by 1e30: the loss overflows within steps.
    explode = ['train_wrapper.args.scheduler_spec={name: MultiStepLR, args: {milestones: [2], gamma: 1.0e+30}}',
               'trainer_params.max_epochs=5', 'train_wrapper.args.optim_spec.name=SGD',
               'train_wrapper.args.optim_spec.args={lr: 0.1}']
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'nan', *explode) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('error: non-finite training loss in epoch 3 (between steps 80 and ')
    assert err.endswith('): loss became NaN or infinite; training stopped, the last good checkpoint is kept')
    state = torch.load(save_root / 'nan' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['epoch'] == 1 and all(torch.isfinite(v).all() for v in state['state_dict'].values())
    log = (save_root / 'nan' / 'log.txt').read_text().splitlines()
    assert sum(line.startswith('epoch ') for line in log) == 2 and log[-1] == err   # the error ends the log


def test_train_py_checkpoint_write_interrupted_leaves_the_old_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import train
    from lightyaml.train.task import Task
    task = Task({'name': 'mlp'}, {'name': 'ce'}, {'name': 'SGD', 'args': {'lr': 0.1}})
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    path = tmp_path / 'last.ckpt'
    train.save_checkpoint(path, task, train.Optimizers(optimizer), (0, 1), {}, {})
    before = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b'PK\x03\x04 half a checkpoint')
        raise OSError(28, 'No space left on device')   # the write dies halfway
    monkeypatch.setattr(torch, 'save', dies_halfway)
    with pytest.raises(OSError):
        train.save_checkpoint(path, task, train.Optimizers(optimizer), (1, 2), {}, {})
    assert path.read_bytes() == before
    assert not path.with_name('last.ckpt.tmp').exists()


def test_lightning_checkpoint_write_interrupted_leaves_the_old_file(save_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert run_pl(save_root, '--config', DIGITS, '--name', 'x', 'trainer_params.max_epochs=1') == 0
    last = save_root / 'x' / 'ckpt' / 'last.ckpt'
    before = last.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):   # AtomicCheckpointIO writes through torch.save to <dest>.tmp
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:1000])
        raise OSError(28, 'No space left on device')   # the write dies halfway
    monkeypatch.setattr(torch, 'save', dies_halfway)
    assert run_pl(save_root, '--resume', str(save_root / 'x'), 'trainer_params.max_epochs=2') == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: run stopped: no space left on the file system of {save_root / 'x'} (") and (
        f' MB free); the last good checkpoint {last} (epoch 1) is kept; continue with --resume '
        in err), err
    assert last.read_bytes() == before
    assert not list(last.parent.glob('*.tmp'))   # the half-written file is gone too
