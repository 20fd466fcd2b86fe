"""bench/run.py at a tiny size: every variant runs on every workload (the image-folder loaders
included) and the table is complete.
No timing is asserted (this machine is shared; the README holds measured figures)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

COLUMNS = ['workload', 'variant', 'steps', 'median ms/step', 'x floor', 'mean ms/step', 'start-up to 1st step',
           'peak RSS']


def test_the_benchmark_runs_every_variant_and_prints_the_table() -> None:
    done = subprocess.run([sys.executable, 'bench/run.py', '--tiny', '--only', 'steps'], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)   # 14 runs, two at a time: ample on a busy machine
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith('Machine: ') and 'torch threads' in lines[0]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines if line.startswith('|')]
    assert rows[0] == COLUMNS
    variants = ['floor', 'floor + mallopt', 'train.py', 'train_pl.py', 'plain PL', 'bare PL']
    loaders = [['images', 'torchvision ImageFolder'], ['images', 'lightyaml loader']]
    assert [row[:2] for row in rows[2:]] == [[w, v] for w in ('mlp', 'conv') for v in variants] + loaders
    for row in rows[2:]:
        assert int(row[2]) > 1 and row[4] != 'nan' and row[6].endswith(' s') and row[7].endswith(' MB'), row
    assert rows[-2][2] == rows[-1][2] == '4'   # 256 files, batches of 64: both loaders read them all
    assert sum(line.startswith('- ') for line in lines) == 8   # one line per target of the issues
    assert re.fullmatch(r'images \(a step is a batch of 64\): torchvision ImageFolder \d+ images/s, '
                        r'lightyaml loader \d+ images/s', next(line for line in lines if line.startswith('images (')))


def test_one_workload_is_measured_alone_with_its_own_targets() -> None:
    done = subprocess.run([sys.executable, 'bench/run.py', '--tiny', '--only', 'steps', '--workload', 'conv'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line.split('|')[1].strip() for line in lines if line.startswith('|')]
    assert rows[:2] == ['workload', '---'] and set(rows[2:]) == {'conv'} and len(rows) == 8
    assert [line.split(':')[0] for line in lines if line.startswith('- ')] == [
        '- train.py / floor, conv', '- train_pl.py / floor, conv']


@pytest.mark.slow   # a dozen processes, two at a time
def test_two_runs_at_once_and_the_quickstart_run_alone_with_their_targets() -> None:
    done = subprocess.run([sys.executable, 'bench/run.py', '--tiny', '--only', 'contention,quickstart',
                           '--workload', 'mlp'], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines if line.startswith('|')]
    assert rows[0] == ['workload', 'variant', 'alone ms/step', '1 thread alone', 'two at once ms/step (each copy)',
                       'x alone (each copy)', 'x 1 thread alone (each copy)', 'steps side by side']
    assert [row[:2] for row in rows[2:5]] == [['mlp', 'floor'], ['mlp', 'train.py'], ['mlp', 'train_pl.py']]
    for row in rows[2:5]:   # each copy's step over one thread alone (every figure rounded to 0.01)
        one_thread = float(row[3])
        if row[7] == '0':   # on a busy machine tiny copies may not train at the same time: nothing to compare
            assert 'nan' in row[4], row
            continue
        for pair, ratio in zip((float(x) for x in row[4].split(',')), (float(x) for x in row[6].split(','))):
            low, high = (pair - 0.005) / (one_thread + 0.005), (pair + 0.005) / (one_thread - 0.005)
            assert low - 0.005 <= ratio <= high + 0.005, row
    assert rows[5] == ['part', 'median s', 'min s', 'max s']
    parts = [row[0] for row in rows[7:]]
    assert parts[:6] == ['command to exit (the command)', 'last epoch line to exit (the command)',
                         'imports (instrumented)', 'start-up to first step (instrumented)', 'training (instrumented)',
                         'last epoch line to exit (instrumented)']
    assert parts[6:] == ['--list', '--print-config'] and all(float(row[1]) >= 0 for row in rows[7:])
    targets = [line.split(':')[0] for line in lines if line.startswith('- ')]
    assert targets == ['- train.py beside itself, mlp', '- train_pl.py beside itself, mlp', '- command to exit',
                       '- start-up to first step', '- last epoch line to exit', '- --list', '- --print-config']


def test_an_unknown_part_is_refused() -> None:
    done = subprocess.run([sys.executable, 'bench/run.py', '--only', 'steps,speed'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and 'expected some of steps, contention, quickstart' in done.stderr


@pytest.mark.slow   # seven processes, ResNet-18 steps on the CPU
def test_the_gpu_check_runs_every_part_on_the_cpu_at_a_tiny_size() -> None:
    # bench/gpu_check.py is for a session lent a GPU; --cpu-smoke runs the same code small, here.
    done = subprocess.run([sys.executable, 'bench/gpu_check.py', '--cpu-smoke'], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith('Machine: no GPU') and 'torch 2.' in lines[0]
    assert lines[1].startswith('- fsdp on the CPU: exit 2, error: ') and lines[1].endswith(
        "trainer_params.strategy: FSDP needs CUDA GPUs (Lightning's limit); on the CPU use strategy=ddp, or "
        "train.py's sharding: {wrap: [torch.nn.Linear]}")
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines if line.startswith('|')]
    assert rows[0] == ['variant', 'ms/step', 'x loop', 'images/s']
    assert [row[0] for row in rows[2:]] == ['loop', 'train.py', 'train_pl.py']
    assert all(float(row[1]) > 0 for row in rows[2:])
    assert [line.split(' / ')[0] for line in lines if line.startswith('- target: ')] == [
        '- target: train.py', '- target: train_pl.py']
    assert re.search(r'torchvision ImageFolder \d+ images/s, lightyaml loader \d+ images/s$', lines[-1])
