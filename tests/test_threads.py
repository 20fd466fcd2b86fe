"""A run's numbers never depend on what else runs (lightyaml/run/threads.py): the CPU thread count
is decided once, before training, from the config (`threads`), the user's OMP_NUM_THREADS or the
machine, recorded in config.yaml, never changed while it trains, and used again by --resume and a
rerun. Tested beside another run training on the same cores, on both entry points."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import DIGITS, QUIET, ROOT, RUNNERS

ENTRIES = ['train.py', 'train_pl.py']
TINY = ['trainer_params.limit_train_batches=4', 'trainer_params.limit_val_batches=2',
        'train_wrapper.args.model_spec.args.hidden=[16]']


def recorded(exp: Path) -> int:
    return yaml.safe_load((exp / 'config.yaml').read_text())['threads']


def weights(exp: Path) -> dict[str, torch.Tensor]:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)['state_dict']


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f'{a.name} and {b.name} differ in {different}'


@pytest.mark.parametrize('entry', ENTRIES)
def test_the_count_is_decided_once_recorded_and_used_again_by_resume(entry: str, save_root: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = RUNNERS[entry]
    at_steps: list[int] = []   # torch's thread count at every optimizer step
    hook = register_optimizer_step_post_hook(lambda *_: at_steps.append(torch.get_num_threads()))
    try:
        default = int(os.environ['OMP_NUM_THREADS']) if os.environ.get('OMP_NUM_THREADS') else torch.get_num_threads()
        assert run(save_root, '--config', DIGITS, '--name', 'default', 'trainer_params.max_epochs=1', *TINY) == 0
        assert recorded(save_root / 'default') == default and set(at_steps) == {default}
        at_steps.clear()
        assert run(save_root, '--config', DIGITS, '--name', 'one', 'trainer_params.max_epochs=1', 'threads=1',
                   *TINY) == 0
        assert recorded(save_root / 'one') == 1 and set(at_steps) == {1}
        at_steps.clear()
        assert torch.get_num_threads() == default   # (the test process's own count is back: conftest.own_threads)
        assert run(save_root, '--resume', str(save_root / 'one'), 'trainer_params.max_epochs=2') == 0
        assert recorded(save_root / 'one') == 1 and at_steps and set(at_steps) == {1}   # the recorded count again
    finally:
        hook.remove()


@pytest.mark.parametrize('entry', ENTRIES)
@pytest.mark.parametrize('value', ['0', 'two', 'true'])
def test_a_bad_thread_count_is_one_line(entry: str, value: str, save_root: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    assert RUNNERS[entry](save_root, '--config', DIGITS, f'threads={value}') == 2
    shown = {'0': '0', 'two': "'two'", 'true': 'True'}[value]
    assert capsys.readouterr().err == (f"error: override 'threads={value}': threads: expected a whole number of "
                                       f"CPU threads from 1, got {shown}\n")
    assert not save_root.exists()


def script(entry: str, save_root: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / entry), *args, '--save-root', str(save_root), *QUIET]


def clean_env() -> dict[str, str]:
    """No thread settings of the test's own: each run decides from the machine."""
    return {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}


def finished(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize('entry', ENTRIES)
def test_beside_another_run_resume_and_copies_end_bit_identical(entry: str, save_root: Path) -> None:
    epochs = ['trainer_params.max_epochs=4', *TINY]
    start = lambda name, *extra: subprocess.Popen(  # noqa: E731
        script(entry, save_root, '--config', DIGITS, '--name', name, *extra), env=clean_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finished(start('alone', *epochs))   # the machine idle
    neighbour = subprocess.Popen(script('train.py', save_root, '--config', DIGITS, '--name', 'neighbour',
                                        'trainer_params.max_epochs=100000'), env=clean_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = save_root / 'neighbour' / 'log.txt'
        deadline = time.time() + 300
        while not (log.is_file() and 'epoch 1/' in log.read_text()):   # training, on every core
            assert time.time() < deadline and neighbour.poll() is None
            time.sleep(0.2)
        finished(start('halves', 'trainer_params.max_epochs=2', *TINY))
        finished(subprocess.Popen(script(entry, save_root, '--resume', str(save_root / 'halves'),
                                         'trainer_params.max_epochs=4'), env=clean_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        copies = [start(f'copy{i}', *epochs) for i in (0, 1)]   # two at once, beside the neighbour too
        for copy in copies:
            finished(copy)
        assert neighbour.poll() is None   # it trained beside them all along
    finally:
        neighbour.kill()
        neighbour.wait()
    assert {recorded(save_root / n) for n in ('alone', 'halves', 'copy0', 'copy1')} == {recorded(save_root / 'alone')}
    for other in ('halves', 'copy0', 'copy1'):
        assert_same_weights(save_root / 'alone', save_root / other)
