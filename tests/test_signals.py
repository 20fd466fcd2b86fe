"""SIGTERM, SIGINT and SIGHUP stop a training run at the next batch: last.ckpt kept, one line naming
the signal and the resume command, exit status 128 + the signal, no traceback; `--resume` goes on."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, ROOT

SMALL = ['trainer_params.max_epochs=200', 'train_wrapper.args.model_spec.args.hidden=[16]']


def start(script: str, save_root: Path, *extra: str) -> subprocess.Popen:
    """A training run of `script` in its own process, its output collected."""
    command = [sys.executable, script, '--config', DIGITS, '--save-root', str(save_root), '--name', 'x', *SMALL, *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until log.txt has an epoch line (training is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and any(line.startswith('epoch ') for line in log.read_text().splitlines()):
            return
        time.sleep(0.1)
    raise AssertionError(f'no epoch line in {log}: {process.communicate()}')


def stop_with(script: str, save_root: Path, signals: list[int], *extra: str) -> tuple[int, str, list[str]]:
    """Start a run, send `signals` once it trains; its exit status, stderr and stop lines in log.txt."""
    process = start(script, save_root, *extra)
    log = save_root / 'x' / 'log.txt'
    wait_for_epoch(process, log)
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.05)
    _, err = process.communicate(timeout=120)
    return process.returncode, err, [line for line in log.read_text().splitlines() if line.startswith('stopped by')]


def check_stopped(status: int, err: str, lines: list[str], signum: int, script: str, save_root: Path) -> str:
    """The promise of a stop; returns the resume command printed."""
    name = signal.Signals(signum).name
    assert status == 128 + signum, err
    assert 'Traceback' not in err, err
    assert len(lines) == 1 and lines[0].startswith(f'stopped by {name} at epoch '), lines
    assert [line for line in err.splitlines() if line.startswith('stopped by')] == lines
    resume = lines[0].split('resume with: ')[1]
    assert resume == f'python {script} --resume {save_root / "x"}'
    state = torch.load(save_root / 'x' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['global_step'] > 0
    assert (save_root / 'x' / 'curves.png').read_bytes().startswith(b'\x89PNG')   # drawn up to the stop
    return resume


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_a_signal_stops_the_run_with_a_resumable_checkpoint(tmp_path: Path, script: str, signum: int) -> None:
    status, err, lines = stop_with(script, tmp_path, [signum])
    resume = check_stopped(status, err, lines, signum, script, tmp_path)
    if signum != signal.SIGTERM:
        return
    step = torch.load(tmp_path / 'x' / 'ckpt' / 'last.ckpt', weights_only=True)['global_step']
    epoch = int(lines[0].split('at epoch ')[1].split(',')[0])
    done = subprocess.run([sys.executable, *shlex.split(resume)[1:], f'trainer_params.max_epochs={epoch + 1}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / 'x' / 'log.txt').read_text()
    assert 'resumed: ' in log and f'epoch {epoch + 1}/{epoch + 1}' in log
    assert torch.load(tmp_path / 'x' / 'ckpt' / 'last.ckpt', weights_only=True)['global_step'] > step


@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_a_second_signal_while_stopping_changes_nothing(tmp_path: Path, script: str) -> None:
    status, err, lines = stop_with(script, tmp_path, [signal.SIGTERM, signal.SIGTERM, signal.SIGINT])
    check_stopped(status, err, lines, signal.SIGTERM, script, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize('script,devices', [
    ('train_pl.py', ['trainer_params.strategy=ddp']),
    ('train.py', [])])
def test_under_ddp_every_process_stops_and_rank_zero_writes(tmp_path: Path, script: str, devices: list[str]) -> None:
    status, err, lines = stop_with(script, tmp_path, [signal.SIGTERM], 'trainer_params.accelerator=cpu',
                                   'trainer_params.devices=2', *devices)
    check_stopped(status, err, lines, signal.SIGTERM, script, tmp_path)


def slurm_job(tmp_path: Path, restarts: int) -> dict[str, str]:
    """The environment of a one-task SLURM job (requeued `restarts` times), with an `scontrol` that
    records its arguments in tmp_path/scontrol.txt."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.txt"}\n')
    (bin_dir / 'scontrol').chmod(0o755)
    return {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'SLURM_JOB_ID': '4242', 'SLURM_NTASKS': '1',
            'SLURM_JOB_NAME': 'train', 'SLURM_NODELIST': 'localhost', 'SLURM_LOCALID': '0', 'SLURM_PROCID': '0',
            'SLURM_NODEID': '0', 'SLURM_RESTART_COUNT': str(restarts)}


@pytest.mark.slow
@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_a_slurm_requeue_keeps_the_run_and_the_requeued_job_finishes_it(tmp_path: Path, script: str) -> None:
    """SIGUSR1 (SLURM's warning before the time limit) stops the run at the next batch and requeues
    the job, in both entry points (in train_pl.py in place of Lightning's handler, which saves inside
    the signal handler and can hang), keeping the last epoch's last.ckpt; SLURM's SIGTERM that follows
    changes nothing, and the requeued job, running the same command, continues the folder to the end,
    bit-identical to a run never stopped. (tests/test_slurm.py does it on a real SLURM.)"""
    run = ['trainer_params.max_epochs=60', 'train_wrapper.args.model_spec.args.hidden=[16]', 'threads=1']
    command = [sys.executable, script, '--config', DIGITS, '--save-root', str(tmp_path), '--name', 'x', *run]
    process = subprocess.Popen(command, cwd=ROOT, env=slurm_job(tmp_path, 0), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_epoch(process, tmp_path / 'x' / 'log.txt')
    process.send_signal(signal.SIGUSR1)
    calls = tmp_path / 'scontrol.txt'
    deadline = time.monotonic() + 60
    while not calls.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert calls.read_text() == 'requeue 4242\n', err
    stopped = [line for line in err.splitlines() if line.startswith('stopped by')]
    assert len(stopped) == 1 and process.returncode == 128 + signal.SIGUSR1, err
    epoch = int(stopped[0].split('stopped by SIGUSR1 at epoch ')[1].split(',')[0])
    assert f': last.ckpt of epoch {epoch - 1} kept, epoch {epoch} runs again; SLURM job 4242 requeued; resume with: ' \
           in stopped[0]
    assert not list(tmp_path.rglob('hpc_ckpt_*.ckpt'))   # Lightning's handler never ran
    state = torch.load(tmp_path / 'x' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['epoch'] == epoch - 2   # as the end of epoch `epoch - 1` (counted from 1) wrote it
    again = subprocess.run(command, cwd=ROOT, env=slurm_job(tmp_path, 1), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    log = (tmp_path / 'x' / 'log.txt').read_text()
    assert 'resumed: ' in log and 'epoch 60/60' in log and (tmp_path / 'x' / 'result.yaml').is_file()
    whole = subprocess.run([sys.executable, script, '--config', DIGITS, '--save-root', str(tmp_path), '--name',
                            'whole', *run], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    never_stopped = torch.load(tmp_path / 'whole' / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']
    continued = torch.load(tmp_path / 'x' / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']
    assert all(torch.equal(never_stopped[k], continued[k]) for k in never_stopped)
