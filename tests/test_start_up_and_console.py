"""What a run costs around its training and what it prints: thread defaults set before torch starts
its thread pool, garbage collection paused for start-up, `--list` without torch or Lightning,
curves.png there at exit, and a console without advertisements or progress-bar
redraws when output goes to a file. No timing is asserted (bench/run.py --only quickstart,contention)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DIGITS, ROOT
from utils import set_thread_defaults

# Imports `module` as a script would, noting the OpenMP variables at the moment torch is first imported.
SPY = '''
import importlib.abc, json, os, sys
seen = {{}}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == 'torch' and not seen:
            names = ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS')
            seen.update({{k: os.environ.get(k) for k in names}})
sys.meta_path.insert(0, Spy())
sys.path.insert(0, {root!r})
import {module}
import torch
print(json.dumps({{'at_torch_import': seen, 'threads': torch.get_num_threads()}}))
'''
OMP = ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME', 'LOCAL_WORLD_SIZE')


def import_with_env(module: str, **env: str) -> dict:
    """Import `module` in a fresh process whose environment has none of the OpenMP variables but `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in OMP}
    done = subprocess.run([sys.executable, '-c', SPY.format(root=str(ROOT), module=module)], env={**clean, **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize('module', ['train', 'train_pl'])
def test_a_clean_environment_keeps_openmps_wait_policy_and_thread_count(module: str) -> None:
    seen = import_with_env(module)
    assert seen['at_torch_import'] == {'OMP_WAIT_POLICY': None, 'OMP_NUM_THREADS': None}


def test_what_the_user_set_is_kept() -> None:
    seen = import_with_env('train_pl', OMP_WAIT_POLICY='PASSIVE', OMP_NUM_THREADS='1', LOCAL_WORLD_SIZE='2')
    assert seen == {'at_torch_import': {'OMP_WAIT_POLICY': 'PASSIVE', 'OMP_NUM_THREADS': '1'}, 'threads': 1}


def test_processes_on_one_machine_split_its_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    seen = import_with_env('train', LOCAL_WORLD_SIZE='2')   # as torchrun and train.py's launcher set it
    assert seen == {'at_torch_import': {'OMP_WAIT_POLICY': None, 'OMP_NUM_THREADS': str(max(1, cores // 2))},
                    'threads': max(1, cores // 2)}


def test_the_thread_defaults_rule_by_rule() -> None:
    assert set_thread_defaults({}, cpu_count=8) == {}
    environ = {'LOCAL_WORLD_SIZE': '2'}
    assert set_thread_defaults(environ, cpu_count=8) == {'OMP_NUM_THREADS': '4'}
    assert environ == {'LOCAL_WORLD_SIZE': '2', 'OMP_NUM_THREADS': '4'}
    # A process the first one started (Lightning's DDP set OMP_NUM_THREADS) keeps its decision.
    assert set_thread_defaults(environ, cpu_count=8) == {}
    assert set_thread_defaults({'LOCAL_WORLD_SIZE': '3'}, cpu_count=2)['OMP_NUM_THREADS'] == '1'
    assert set_thread_defaults({'LOCAL_WORLD_SIZE': '2', 'MKL_NUM_THREADS': '2'}, 8) == {}
    assert set_thread_defaults({'OMP_NUM_THREADS': '3', 'LOCAL_WORLD_SIZE': '2'}, 8) == {}
    assert set_thread_defaults({'KMP_BLOCKTIME': '0', 'OMP_WAIT_POLICY': 'ACTIVE'}, 8) == {}


def test_garbage_collection_pauses_only_for_a_script_and_resumes_frozen() -> None:
    code = (f'import gc, sys; sys.path.insert(0, {str(ROOT)!r}); import train_pl; assert gc.isenabled(); '
            'from utils import pause_gc_for_start_up, resume_gc; pause_gc_for_start_up(); assert not gc.isenabled(); '
            'resume_gc(); print(gc.isenabled(), gc.get_freeze_count() > 10000)')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ['True', 'True'], done.stderr[-2000:]


def test_list_imports_neither_torch_nor_lightning_and_lists_what_importing_finds(tmp_path: Path) -> None:
    env = {**os.environ, 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    code = ('import sys; sys.path.insert(0, {root!r}); import train_pl; train_pl.main(["--list"]); '
            'print(sorted(m for m in ("torch", "pytorch_lightning", "torchmetrics") if m in sys.modules))')
    listings = [subprocess.run([sys.executable, '-c', code.format(root=str(ROOT))], env=env, capture_output=True,
                               text=True, timeout=300) for _ in range(2)]   # the first fills the cache
    assert listings[0].stdout.splitlines()[:-1] == listings[1].stdout.splitlines()[:-1]
    assert listings[1].stdout.splitlines()[-1] == '[]'
    live = ('import sys; sys.path.insert(0, {root!r}); from utils import REGISTRIES; '
            'print("\\n".join(f"{{k}}: {{\', \'.join(r.names())}}" for k, r in REGISTRIES.items()))')
    done = subprocess.run([sys.executable, '-c', live.format(root=str(ROOT))], capture_output=True, text=True,
                          timeout=300)
    assert listings[1].stdout.splitlines()[:-1] == done.stdout.splitlines()
    assert done.stdout.startswith('datasets: ') and 'digits' in done.stdout and 'base, gan' in done.stdout


def run_script(entry: str, save_root: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python ENTRY --config digits.yaml` with its output captured (a pipe, not a terminal)."""
    clean = {k: v for k, v in os.environ.items() if k not in ('PYTHONWARNINGS', 'COLUMNS')}
    return subprocess.run([sys.executable, entry, '--config', DIGITS, '--save-root', str(save_root),
                           'trainer_params.max_epochs=3', *extra], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize('entry', ['train_pl.py', 'train.py'])
def test_output_to_a_pipe_is_a_line_per_epoch_without_tips_or_deprecations(entry: str, save_root: Path) -> None:
    done = run_script(entry, save_root)
    assert done.returncode == 0, done.stderr[-3000:]
    output = (done.stdout + done.stderr).splitlines()
    epochs = [line.split()[1] for line in output if line.startswith('epoch ')]
    # The epochs, the end, and where SLURM is installed Lightning's `srun` hint (once per Trainer).
    assert epochs == ['1/3', '2/3', '3/3'] and len(output) <= 3 + 1 + 2, output
    assert not [line for line in output if 'Tip' in line or 'eprecat' in line or 'Warning' in line], output
    # Lightning's lines that say nothing on a CPU (GPU/TPU available, `Trainer.fit` stopped) are gone; the run's
    # own last line says where things are.
    assert not [line for line in output if ' available: ' in line or line.startswith('`Trainer.fit` stopped')], output
    exp = save_root / 'digits'
    assert done.stdout.splitlines()[-1] == (exp / 'log.txt').read_text().splitlines()[-1]
    assert re.fullmatch(rf'done: best val/acc 0\.\d{{4}} at epoch \d+ -> {re.escape(str(exp))} '
                        r'\(ckpt/epoch=\d+-step=\d+\.ckpt, curves\.png, result\.yaml\)', done.stdout.splitlines()[-1])
    curves = save_root / 'digits' / 'curves.png'   # drawn before the command exits
    assert curves.read_bytes().startswith(b'\x89PNG\r\n\x1a\n')


def test_verbose_shows_what_is_hidden(save_root: Path) -> None:
    done = run_script('train_pl.py', save_root, '--verbose', 'trainer_params.max_epochs=1')
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Tip: ' in done.stderr and 'is deprecated' in done.stderr
    assert 'GPU available: ' in done.stdout + done.stderr and '`Trainer.fit` stopped: `max_epochs=1` reached.' in (
        done.stdout + done.stderr)


@pytest.mark.parametrize('entry', ['train_pl.py', 'train.py'])
def test_a_bar_asked_for_numbers_epochs_from_one_as_the_log_does(entry: str, save_root: Path,
                                                                   capfd: pytest.CaptureFixture) -> None:
    import train
    import train_pl
    main = train_pl.main if entry == 'train_pl.py' else train.main
    assert main(['--config', DIGITS, '--save-root', str(save_root), 'trainer_params.max_epochs=2',
                 'trainer_params.limit_train_batches=3', 'trainer_params.enable_progress_bar=true']) == 0
    out = capfd.readouterr()
    bar = out.out if entry == 'train_pl.py' else out.err   # Lightning's bar draws on stdout, tqdm on stderr
    assert 'epoch 1/2: ' in bar and 'epoch 2/2: ' in bar   # tqdm writes the description, then ': '
    assert 'Epoch 0' not in bar and 'epoch 0' not in bar
