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


CRASHING_MODEL = '''
import torch.distributed as dist
from models import register
from models.mlp import MLP


@register('crashes_on_rank_1')
class CrashesOnRank1(MLP):
    steps = 0

    def forward(self, batch):
        self.steps += 1
        if dist.is_initialized() and dist.get_rank() == 1 and self.steps == 5:
            raise RuntimeError('rank 1 fails on purpose')
        return super().forward(batch)
'''


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_a_crashing_rank_ends_the_whole_job_quickly(tmp_path: Path, entry: str) -> None:
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    (project / 'models' / 'crashy.py').write_text(CRASHING_MODEL)
    command = ([*TORCHRUN, '--standalone', '--nproc_per_node=2', entry] if entry == 'train.py'
               else [sys.executable, entry, 'trainer_params.devices=2', 'trainer_params.strategy=ddp'])
    start = time.monotonic()
    done = run([*command, '--config', DIGITS, '--save-root', str(tmp_path / 'save'), *ODD_VAL, *QUIET,
                'train_wrapper.args.model_spec.name=crashes_on_rank_1'], cwd=project, timeout=240)
    assert done.returncode != 0
    assert 'rank 1 fails on purpose' in done.stdout + done.stderr
    assert time.monotonic() - start < 120
