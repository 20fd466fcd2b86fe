"""bench/run.py at a tiny size: every variant runs on every workload (the image-folder loaders
included) and the table is complete; a tiny run judges no target and prints no NaN (issue 28).
No timing is asserted (this machine is shared; the README holds measured figures)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from types import ModuleType

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
    assert 'Targets: not judged (--tiny only checks that every run works)' in lines
    assert not any(line.startswith('- ') for line in lines) and not re.search(r'\bnan\b|\bmet\b', done.stdout)
    assert re.fullmatch(r'images \(a step is a batch of 64\): torchvision ImageFolder \d+ images/s, '
                        r'lightyaml loader \d+ images/s', next(line for line in lines if line.startswith('images (')))


def test_one_workload_is_measured_alone_with_its_own_targets() -> None:
    done = subprocess.run([sys.executable, 'bench/run.py', '--tiny', '--only', 'steps', '--workload', 'conv'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line.split('|')[1].strip() for line in lines if line.startswith('|')]
    assert rows[:2] == ['workload', '---'] and set(rows[2:]) == {'conv'} and len(rows) == 8


def bench_run(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/run.py as a module (it imports its neighbours in bench/ as top-level modules)."""
    monkeypatch.syspath_prepend(str(ROOT / 'bench'))
    spec = importlib.util.spec_from_file_location('bench_run', ROOT / 'bench' / 'run.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_measurement_judges_the_targets_of_the_workloads_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = bench_run(monkeypatch)
    ms = {'floor': 1.0, 'floor + mallopt': 1.0, 'train.py': 1.05, 'train_pl.py': 1.2, 'plain PL': 3.0, 'bare PL': 1.1}
    results = {('conv', variant): [{'median': m, 'mean': m, 'startup': 2.0, 'peak_mb': 300.0, 'steps': 40}]
               for variant, m in ms.items()}
    lines = bench.report(results, 1, None).splitlines()
    assert [line for line in lines if line.startswith('- ')] == [
        '- train.py / floor, conv: 1.05 (<= 1.1) met', '- train_pl.py / floor, conv: 1.20 (<= 1.05) NOT met']
    lines = bench.report(results, 1, None, judged=False).splitlines()
    assert lines[-1] == 'Targets: not judged (--tiny only checks that every run works)'
    assert not any(line.startswith('- ') for line in lines)


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
            assert row[4] == '-, -' and 'nan' not in row, row
            continue
        for pair, ratio in zip((float(x) for x in row[4].split(',')), (float(x) for x in row[6].split(','))):
            low, high = (pair - 0.005) / (one_thread + 0.005), (pair + 0.005) / (one_thread - 0.005)
            assert low - 0.005 <= ratio <= high + 0.005, row
    assert rows[5] == ['part', 'median s', 'min s', 'max s']
    parts = [row[0] for row in rows[7:]]
    assert parts[:6] == ['command to exit (the command)', 'last epoch line to exit (the command)',
                         'imports (instrumented)', 'start-up to first step (instrumented)', 'training (instrumented)',
                         'last epoch line to exit (instrumented)']
    assert parts[6:] == ['--list', '--print-config', '--runs (200 experiments)']
    assert all(float(row[1]) >= 0 for row in rows[7:])
    assert not any(line.startswith('- ') for line in lines) and 'nan' not in done.stdout   # --tiny: no verdicts
    assert [line for line in lines if 'not judged' in line] == [
        f'{part} targets: not judged (--tiny only checks that every run works)'
        for part in ('Two-at-once', 'Quickstart')]


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
