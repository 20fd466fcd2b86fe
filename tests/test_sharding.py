"""train.py's sharded path (torch's FSDP2, the config's `sharding`), on CPU with gloo: it trains,
checkpoints whole, resumes bit-exact, and its checkpoints load anywhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, QUIET, ROOT, run_pl, run_py

SHARDED = 'sharding={wrap: [torch.nn.Linear]}'
TWO = ['trainer_params.devices=2', 'trainer_params.accelerator=cpu']
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']


def train(save_root: Path, *args: str, launcher: tuple[str, ...] = (sys.executable,)) -> None:
    """train.py with `args` in its own processes (2 of them where the args or the launcher say so)."""
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    done = subprocess.run([*launcher, 'train.py', *args, '--save-root', str(save_root), *QUIET], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def last(exp: Path) -> dict:
    return torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)


def assert_equal_states(a: dict, b: dict) -> None:
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_sharded_processes_train_as_ddp_does_and_write_a_whole_checkpoint(save_root: Path) -> None:
    train(save_root, '--config', DIGITS, '--name', 'sharded', SHARDED, 'trainer_params.max_epochs=2', *TWO)
    train(save_root, '--config', DIGITS, '--name', 'ddp', 'trainer_params.max_epochs=2', *TWO)
    exp = save_root / 'sharded'
    log = (exp / 'log.txt').read_text().splitlines()
    assert [line.split()[1] for line in log if line.startswith('epoch ')] == ['1/2', '2/2']   # rank 0 wrote once
    sharded, ddp = last(exp), last(save_root / 'ddp')
    # Gradients reduce-scattered into shards, or all-reduced by DDP: the same sums on 2 processes.
    assert_equal_states(sharded['state_dict'], ddp['state_dict'])
    # The whole state, in the layout an unsharded run writes: plain tensors, optimizer states by index.
    assert all(type(v) is torch.Tensor for v in sharded['state_dict'].values())
    assert sharded['optimizer_states'][0]['param_groups'][0]['params'] == [0, 1, 2, 3]
    for i, (name, weight) in enumerate(sharded['state_dict'].items()):
        assert sharded['optimizer_states'][0]['state'][i]['exp_avg'].shape == weight.shape, name
        assert torch.equal(sharded['optimizer_states'][0]['state'][i]['exp_avg'],
                           ddp['optimizer_states'][0]['state'][i]['exp_avg'])
    # --test (one process, unsharded) loads it, in both entry points.
    assert run_py(save_root, '--test', str(exp), '--ckpt', 'last') == 0
    assert run_pl(save_root, '--test', str(exp), '--ckpt', 'last') == 0
    assert (exp / 'test.yaml').is_file()


@pytest.mark.slow
def test_an_interrupted_sharded_run_resumed_under_torchrun_ends_bit_identical(save_root: Path) -> None:
    # The moving average, clipping, accumulation and bf16 autocast on the shards too.
    extra = [SHARDED, 'callbacks=[{name: ema, args: {decay: 0.9}}]', 'trainer_params.gradient_clip_val=0.5',
             'trainer_params.accumulate_grad_batches=2', 'trainer_params.precision=bf16-mixed']
    train(save_root, '--config', DIGITS, '--name', 'whole', 'trainer_params.max_epochs=2', *extra, *TWO)
    train(save_root, '--config', DIGITS, '--name', 'parts', 'trainer_params.max_epochs=1', *extra, *TWO)
    train(save_root, '--resume', str(save_root / 'parts'), 'trainer_params.max_epochs=2', launcher=tuple(TORCHRUN))
    whole, parts = last(save_root / 'whole'), last(save_root / 'parts')
    assert (whole['epoch'], whole['global_step']) == (parts['epoch'], parts['global_step']) == (1, 20)
    assert_equal_states(whole['state_dict'], parts['state_dict'])
    assert_equal_states(whole['callbacks']['EMA']['weights'], parts['callbacks']['EMA']['weights'])
    assert_equal_states(whole['optimizer_states'][0]['state'][0], parts['optimizer_states'][0]['state'][0])


def test_one_sharded_process_trains_as_an_unsharded_one(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    # One shard each, on a process group of one: the same numbers, and the group is gone after.
    assert run_py(save_root, '--config', DIGITS, '--name', 'one', 'sharding={wrap: [Linear]}',
                  'trainer_params.max_epochs=1') == 0
    assert not torch.distributed.is_initialized()
    assert run_py(save_root, '--config', DIGITS, '--name', 'plain', 'trainer_params.max_epochs=1') == 0
    assert_equal_states(last(save_root / 'one')['state_dict'], last(save_root / 'plain')['state_dict'])
    assert run_py(save_root, '--config', DIGITS, '--name', 'dry', 'sharding={}', '--dry-run') == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        'dry run: built everything and sharded the model; the first steps are not run on a sharded model (they '
        'would need all of it on one device); nothing was created')


@pytest.mark.parametrize('wrap, lines', [
    ('[Linaer, torch.nn.Conv2d, torch.nn.Foo, os.path]', [
        "sharding.wrap.0: no module class 'Linaer' (did you mean 'Linear'?); the model has: Dropout, Linear, MLP, "
        'ReLU, Sequential',
        "sharding.wrap.1: the model has no 'torch.nn.Conv2d' module; it has: Dropout, Linear, MLP, ReLU, Sequential",
        "sharding.wrap.2: no module class 'torch.nn.Foo'; the model has: Dropout, Linear, MLP, ReLU, Sequential",
        "sharding.wrap.3: 'os.path' is not a module class (an nn.Module subclass)"]),
    ('Linear', ["sharding.wrap: expected a list of module class names, dotted (torch.nn.Linear) or of the model's "
                "own classes (Block), got 'Linear'"]),
])
def test_a_wrong_wrap_list_is_one_line_a_name_before_anything_is_created(wrap: str, lines: list[str], save_root: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    override = f'sharding={{wrap: {wrap}}}'
    assert run_py(save_root, '--config', DIGITS, override) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: override '{override}': {line}" for line in lines]
    assert not save_root.exists() and not torch.distributed.is_initialized()


def test_train_pl_points_to_its_own_sharding(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_pl(save_root, '--config', DIGITS, SHARDED) == 2
    assert capsys.readouterr().err == (
        f"error: override '{SHARDED}': sharding: train.py's sharded path (torch's fully_shard); train_pl.py shards "
        "through Lightning: trainer_params.strategy: {name: fsdp, args: {auto_wrap_policy: [...]}}, on CUDA GPUs\n")
