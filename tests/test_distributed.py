"""Several processes on CPU (gloo): Lightning's DDP, torchrun, our launcher, two 'nodes'."""
from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, QUIET, ROOT
from utils import DATASETS

pytestmark = pytest.mark.slow
# 269 validation images: an odd count, so a padding sampler would count one image twice.
ODD_VAL = ['data_module.args.val.args.val_fraction=0.1497', 'data_module.args.train.args.val_fraction=0.1497',
           'trainer_params.max_epochs=2', 'trainer_params.accelerator=cpu']
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run']


def run(command: list[str], cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LIGHTYAML_SEED')}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def single_process_val(ckpt: Path) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a checkpoint on the odd validation split, in this process."""
    from lightyaml.train.task import Task
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    task = Task(**state['hyper_parameters'])
    task.load_state_dict(state['state_dict'])
    task.eval()
    data = DATASETS.make({'name': 'digits', 'args': {'split': 'val', 'val_fraction': 0.1497}})
    assert len(data) == 269
    with torch.no_grad():
        logits = task.model(data.tensors)
    labels = data.tensors['label']
    return ((logits.argmax(1) == labels).float().mean().item(),
            torch.nn.functional.cross_entropy(logits, labels).item())


def assert_written_once_and_exact(exp: Path, entry: str) -> None:
    """One command line, one line per epoch, one CSV row per epoch, and the logged validation
    metrics of the last epoch equal to a single-process evaluation of last.ckpt."""
    log = (exp / 'log.txt').read_text().splitlines()
    assert sum(line.startswith('command: ') for line in log) == 1
    assert [line.split()[1] for line in log if line.startswith('epoch ')] == ['1/2', '2/2']
    assert f'src/{entry}' and (exp / 'src' / entry).is_file()
    with open(exp / 'metrics.csv') as f:
        val_rows = [r for r in csv.DictReader(f) if r['val/acc']]
    assert [int(r['epoch']) for r in val_rows] == [0, 1]
    acc, loss = single_process_val(exp / 'ckpt' / 'last.ckpt')
    assert float(val_rows[-1]['val/acc']) == pytest.approx(acc, abs=1e-7)
    assert float(val_rows[-1]['val/loss']) == pytest.approx(loss, rel=1e-5)
    assert sorted(p.name for p in exp.iterdir() if p.name.endswith('.tmp')) == []


def test_train_pl_with_two_ddp_processes(tmp_path: Path) -> None:
    done = run([sys.executable, 'train_pl.py', '--config', DIGITS, '--save-root', str(tmp_path), '--name', 'pl2',
                'trainer_params.devices=2', 'trainer_params.strategy=ddp', *ODD_VAL, *QUIET])
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Starting with 2 processes' in done.stdout + done.stderr
    assert_written_once_and_exact(tmp_path / 'pl2', 'train_pl.py')


def test_train_py_under_torchrun(tmp_path: Path) -> None:
    done = run([*TORCHRUN, '--standalone', '--nproc_per_node=2', 'train.py', '--config', DIGITS,
                '--save-root', str(tmp_path), '--name', 'tr2', *ODD_VAL, *QUIET])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_written_once_and_exact(tmp_path / 'tr2', 'train.py')


def test_train_py_launches_one_process_per_device(tmp_path: Path) -> None:
    done = run([sys.executable, 'train.py', '--config', DIGITS, '--save-root', str(tmp_path), '--name', 'own2',
                'trainer_params.devices=2', *ODD_VAL, *QUIET])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_written_once_and_exact(tmp_path / 'own2', 'train.py')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('entry, extra', [('train.py', []), ('train_pl.py', ['--nodes', '2', 'trainer_params.devices=1',
                                                                             'trainer_params.strategy=ddp'])])
def test_two_nodes_through_torchrun_rendezvous(tmp_path: Path, entry: str, extra: list[str]) -> None:
    # The README's multi-machine recipe, with both "machines" on this one.
    port = free_port()
    commands = [[*TORCHRUN, '--nnodes=2', f'--node_rank={rank}', '--nproc_per_node=1', '--rdzv_backend=c10d',
                 f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv_id=lightyaml-test', entry, '--config', DIGITS,
                 '--save-root', str(tmp_path), '--name', 'nodes', *extra, *ODD_VAL, *QUIET] for rank in (0, 1)]
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    nodes = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert_written_once_and_exact(tmp_path / 'nodes', entry)


def test_gpu_flag_runs_one_process_per_device_through_the_launcher(monkeypatch: pytest.MonkeyPatch,
                                                                    save_root: Path) -> None:
    import train
    launched = []
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(train, 'launch_processes', lambda nproc, argv: launched.append((nproc, list(argv))))
    args = ['--config', DIGITS, '--gpu', '0,1', '--save-root', str(save_root)]
    assert train.main(args) == 0
    assert launched == [(2, args)]
    assert os.environ['CUDA_VISIBLE_DEVICES'] == '0,1'
    assert not save_root.exists()   # the launched processes make the folder, rank 0 only
    # Inside a launched process (WORLD_SIZE set) it trains instead of launching again.
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert train.requested_processes(train.TrainerParams(), '0,1') == ('cuda', 2)


def test_shuffles_differ_per_epoch_and_agree_across_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets.data_module import DataModule
    torch.manual_seed(7)
    data = DataModule(train={'name': 'digits'}, val={'name': 'digits', 'args': {'split': 'val'}}, batch_size=1)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 2)
    orders = {}
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, 'get_rank', lambda rank=rank: rank)
        train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
        assert train_loader.sampler.seed == 7 and train_loader.sampler.rank == rank
        for epoch in (0, 1):
            train_loader.sampler.set_epoch(epoch)
            orders[rank, epoch] = list(train_loader.sampler)
        orders[rank, 'val'] = list(val_loader.sampler)
    n = len(data.dataset('train'))
    assert sorted(orders[0, 0] + orders[1, 0]) == sorted(set(orders[0, 0] + orders[1, 0])) or n % 2
    assert set(orders[0, 0]) | set(orders[1, 0]) == set(range(n))
    assert orders[0, 0] != orders[0, 1]
    assert sorted(orders[0, 'val'] + orders[1, 'val']) == list(range(len(data.dataset('val'))))


CRASHING_MODELS = '''
import torch.distributed as dist
from models import register
from models.mlp import MLP


@register('crashes_on_rank_1')
class CrashesOnRank1(MLP):
    steps = 0
    message = 'rank 1 fails on purpose'

    def crashes(self):
        return dist.is_initialized() and dist.get_rank() == 1

    def forward(self, batch):
        self.steps += 1
        if self.steps == 5 and self.crashes():
            raise RuntimeError(self.message)
        return super().forward(batch)


@register('fails_on_every_rank')
class FailsOnEveryRank(CrashesOnRank1):
    message = 'every rank fails on purpose'

    def crashes(self):
        return True
'''


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_a_crashing_rank_ends_the_whole_job_quickly(tmp_path: Path, entry: str) -> None:
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    (project / 'models' / 'crashy.py').write_text(CRASHING_MODELS)
    command = ([*TORCHRUN, '--standalone', '--nproc_per_node=2', entry] if entry == 'train.py'
               else [sys.executable, entry, 'trainer_params.devices=2', 'trainer_params.strategy=ddp'])
    start = time.monotonic()
    done = run([*command, '--config', DIGITS, '--save-root', str(tmp_path / 'save'), *ODD_VAL, *QUIET,
                'train_wrapper.args.model_spec.name=crashes_on_rank_1'], cwd=project, timeout=240)
    assert done.returncode != 0
    assert 'rank 1 fails on purpose' in done.stdout + done.stderr
    assert time.monotonic() - start < 120


# Registered first, so it runs last among the exit functions: what is still running when Python's
# own teardown begins. gloo's worker threads then abort the process if one is freeing tensors.
THREADS_AT_EXIT = '''
import atexit
import os
import sys


def _threads_at_exit():
    names = []
    for task in os.listdir('/proc/self/task'):
        try:
            with open(f'/proc/self/task/{task}/comm') as f:
                names.append(f.read().strip())
        except OSError:
            pass
    sys.stderr.write(f'threads at exit: {sorted(names)}\\n')


atexit.register(_threads_at_exit)
'''
GLOO_THREADS = ('pt_gloo_runloop', 'gloo_tcp_loop')   # a TCPStore's thread (a launcher's) takes no GIL


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason="reads the threads' names from /proc")
@pytest.mark.parametrize('entry, launch, fails', [
    ('train.py', ['trainer_params.devices=2'], False),
    ('train.py', ['trainer_params.devices=2'], True),
    ('train.py', 'torchrun', False),
    ('train_pl.py', ['trainer_params.devices=2', 'trainer_params.strategy=ddp'], False),
    ('train_pl.py', ['trainer_params.devices=2', 'trainer_params.strategy=ddp'], True)])
def test_the_process_group_and_its_threads_end_before_pythons_exit(tmp_path: Path, entry: str,
                                                                    launch: object, fails: bool) -> None:
    """Each process of a run of two, trained to the end or failed on every rank, has left its
    process group, and gloo's threads are gone, when Python's exit begins: one still freeing a
    collective's tensors then aborts the process ('terminate called without an active
    exception', exit 134: srun's task 1 in CI)."""
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    (project / 'models' / 'crashy.py').write_text(CRASHING_MODELS)
    probe = tmp_path / 'probe'
    probe.mkdir()
    (probe / 'sitecustomize.py').write_text(THREADS_AT_EXIT)
    command = ([*TORCHRUN, '--standalone', '--nproc_per_node=2', entry] if launch == 'torchrun'
               else [sys.executable, entry, *launch])
    model = ['train_wrapper.args.model_spec.name=fails_on_every_rank'] if fails else []
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LIGHTYAML_SEED')}
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(probe), env.get('PYTHONPATH')]))
    done = subprocess.run([*command, '--config', DIGITS, '--save-root', str(tmp_path / 'save'), *ODD_VAL, *QUIET,
                           'trainer_params.max_epochs=1', *model], cwd=project, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == (1 if fails else 0), done.stderr[-3000:]
    assert ('every rank fails on purpose' in done.stdout + done.stderr) == fails
    threads = [line for line in done.stderr.splitlines() if line.startswith('threads at exit: ')]
    assert len(threads) >= 2, done.stderr[-3000:]   # the two processes of the run (and a launcher's)
    assert [line for line in threads if any(name in line for name in GLOO_THREADS)] == []
