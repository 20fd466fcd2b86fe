"""SLURM for real: a one-node cluster of this machine (munged, slurmctld and slurmd, started by the
`slurm` fixture and stopped after the last test) runs a `--launcher slurm --submit` sweep to its
summary, requeues a task stopped by USR1 that then ends bit-identical to an uninterrupted run, and
trains one DDP run of two `srun` tasks from each entry point. Where the daemons cannot start (no
Debian `slurm-wlm` and `munge`, not root), these tests are skipped, saying what failed.

The pure parts (srun's variables as torchrun's, the device count check, Lightning's srun hint) are
tested without the daemons, first."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, QUIET, ROOT, run_py
from lightyaml.config.loading import load_config
from lightyaml.errors import ConfigError
from lightyaml.launch.devices import check_launched_processes
from lightyaml.process import srun_as_torchrun

LR = 'train_wrapper.args.optim_spec.args.lr'
ONE_THREAD = ['threads=1', *QUIET]   # a task's threads: SLURM here binds no cores (task/none)
SRUN_STEP = {'SLURM_STEP_ID': '0', 'SLURM_NTASKS': '4', 'SLURM_PROCID': '3', 'SLURM_LOCALID': '1', 'SLURM_NODEID': '1',
             'SLURM_NODELIST': 'gpu[07-08]', 'SLURM_JOB_ID': '123456', 'SLURM_STEP_TASKS_PER_NODE': '2(x2)',
             'SLURM_JOB_NAME': 'train'}


# ------------------------------------------------------------------------------- without the daemons

def test_srun_tasks_become_torchrun_processes_as_lightning_reads_them() -> None:
    environ = dict(SRUN_STEP)
    assert srun_as_torchrun(environ) == {'RANK': '3', 'WORLD_SIZE': '4', 'LOCAL_RANK': '1', 'NODE_RANK': '1',
                                         'LOCAL_WORLD_SIZE': '2', 'MASTER_ADDR': 'gpu07', 'MASTER_PORT': '18456'}
    assert environ['RANK'] == '3'   # set in the environment given
    kept = {**SRUN_STEP, 'MASTER_ADDR': 'head', 'MASTER_PORT': '29500', 'SLURM_STEP_TASKS_PER_NODE': '3,1'}
    srun_as_torchrun(kept)
    assert (kept['MASTER_ADDR'], kept['MASTER_PORT'], kept['LOCAL_WORLD_SIZE']) == ('head', '29500', '1')   # node 1
    # Nothing under torchrun, in a batch script (srun did not start it), with one task, or `interactive`.
    for change in ({'RANK': '0'}, {'SLURM_STEP_ID': None}, {'SLURM_NTASKS': '1'}, {'SLURM_JOB_NAME': 'interactive'}):
        environ = {k: v for k, v in {**SRUN_STEP, **change}.items() if v is not None}
        assert srun_as_torchrun(environ) == {} and 'WORLD_SIZE' not in environ


def test_a_device_count_other_than_sruns_tasks_is_one_line(tmp_path: Path) -> None:
    cfg = load_config(DIGITS, ['trainer_params.devices=3'])
    launched = {**SRUN_STEP, **srun_as_torchrun(dict(SRUN_STEP))}
    with pytest.raises(ConfigError) as refused:
        check_launched_processes(3, None, cfg, launched)
    assert refused.value.problems == [
        "override 'trainer_params.devices=3': trainer_params.devices: 3 devices, but srun (--ntasks-per-node=2) "
        "started 2 processes on this machine, one per device; set 2 or leave it out"]
    with pytest.raises(ConfigError, match=r'^--gpu 0,1,2: 3 devices, but srun .*; give 2 devices or leave --gpu out$'):
        check_launched_processes(3, '0,1,2', cfg, launched)
    check_launched_processes(2, None, load_config(DIGITS, ['trainer_params.devices=2']), launched)
    check_launched_processes(1, None, load_config(DIGITS), launched)   # no count asked: the launcher's
    check_launched_processes(1, 'cpu', cfg, launched)
    check_launched_processes(3, None, cfg, {})   # no launcher: train.py starts the processes itself


def test_no_srun_hint_outside_a_slurm_job(tmp_path: Path) -> None:
    """Where SLURM's tools are installed (a login node) Lightning hints at every Trainer to prepend
    srun; outside a job it is noise, shown again by --verbose."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text('#!/bin/sh\nexit 1\n')
    (bin_dir / 'srun').chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env['PATH'] = f'{bin_dir}:{env["PATH"]}'
    for flags, hints in (([], 0), (['--verbose'], 2)):   # two Trainers: the preflight's and the run's
        done = subprocess.run([sys.executable, 'train_pl.py', '--config', DIGITS, '--save-root', str(tmp_path),
                               '--name', f'h{len(flags)}', 'trainer_params.max_epochs=1', *QUIET, *flags],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (done.stdout + done.stderr).count('The `srun` command is available on your system') == hints


@pytest.mark.slow
@pytest.mark.parametrize('entry,strategy', [('train.py', []), ('train_pl.py', ['trainer_params.strategy=ddp'])])
def test_usr1_to_a_ddp_run_started_here_stops_every_process(tmp_path: Path, entry: str, strategy: list[str]) -> None:
    """A task of slurm.sh training on two devices: USR1 reaches the process that started the others
    (train.py's launcher passes it on, Lightning's rank 0 is that process), all stop at one batch and
    the last epoch's last.ckpt stays for the requeue."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}, 'LIGHTYAML_REQUEUED_BY': 'slurm.sh'}
    run = subprocess.Popen([sys.executable, entry, '--config', DIGITS, '--save-root', str(tmp_path), '--name', 'd',
                            'trainer_params.max_epochs=200', 'trainer_params.accelerator=cpu',
                            'trainer_params.devices=2', *strategy, *ONE_THREAD], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = tmp_path / 'd' / 'log.txt', time.monotonic() + 180
    while not (log.is_file() and '\nepoch 2/' in log.read_text()):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGUSR1)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGUSR1 and 'Traceback' not in err, err[-3000:]
    stopped = [line for line in log.read_text().splitlines() if line.startswith('stopped by')]
    assert len(stopped) == 1 and ' kept, epoch ' in stopped[0] and 'slurm.sh requeues nothing' in stopped[0], stopped
    epoch = int(stopped[0].split('at epoch ')[1].split(',')[0])
    assert torch.load(log.parent / 'ckpt' / 'last.ckpt', weights_only=True)['epoch'] == epoch - 2


@pytest.mark.skipif(importlib.util.find_spec('optuna') is None, reason='optuna is not installed')
def test_summarize_writes_a_searchs_summary_and_runs_nothing(save_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """What the summary job of a search runs: the summary of the study as it is, no trial started."""
    search = tmp_path / 's.yaml'
    search.write_text(f'n_trials: 1\nparams: {{{LR}: {{float: [1e-3, 1e-2]}}}}\n')
    command = ['--config', DIGITS, '--name', 'su', '--search', str(search), 'trainer_params.max_epochs=1']
    assert run_py(save_root, *command, '--summarize') == 2   # no study yet: one line, nothing created
    assert capsys.readouterr().err == (f'error: --summarize: no study in {save_root / "su-search"}; '
                                       f'run the search first\n')
    assert not save_root.exists()
    assert run_py(save_root, *command) == 0
    folder = save_root / 'su-search'
    (folder / 'summary.md').unlink()
    capsys.readouterr()
    assert run_py(save_root, *command, '--summarize') == 0
    assert capsys.readouterr().out == (folder / 'summary.md').read_text() + '\n'   # printed, as a search ends
    assert (folder / 'summary.md').read_text().startswith("1 trials of study 'su'")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith('trial-')) == ['trial-000']


# ------------------------------------------------------------------------------------ a real SLURM

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _slurm_conf(folder: Path, cpus: int, memory: int) -> str:
    """slurm.conf of a one-node cluster: this machine as `localhost`, every file in `folder`."""
    return '\n'.join([
        'ClusterName=lightyaml', 'SlurmctldHost=localhost', f'SlurmctldPort={_free_port()}',
        f'SlurmdPort={_free_port()}', 'SlurmUser=root', 'SlurmdUser=root', 'AuthType=auth/munge',
        'CredType=cred/munge',
        # cred_expire: a requeued job waits this long (default 120 s) before it may start again
        f'AuthInfo=socket={folder}/munge/socket,cred_expire=5', 'SchedulerParameters=sched_interval=1,bf_interval=1',
        f'StateSaveLocation={folder}/state', f'SlurmdSpoolDir={folder}/spool',
        f'SlurmctldPidFile={folder}/slurmctld.pid', f'SlurmdPidFile={folder}/slurmd.pid',
        'ProctrackType=proctrack/linuxproc', 'TaskPlugin=task/none', 'SelectType=select/cons_tres',
        'SelectTypeParameters=CR_Core', 'MpiDefault=none', 'SwitchType=switch/none',
        'JobAcctGatherType=jobacct_gather/none', 'AccountingStorageType=accounting_storage/none',
        'ReturnToService=2', 'SlurmdParameters=config_overrides',   # two CPUs even on a one-core machine
        f'NodeName=localhost NodeAddr=127.0.0.1 CPUs={max(cpus, 2)} RealMemory={memory} State=UNKNOWN',
        'PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP', ''])


def _skip(why: str, *logs: Path) -> None:
    tail = ' | '.join(line for log in logs if log.is_file() for line in log.read_text().splitlines()[-3:])
    pytest.skip(f'no SLURM here: {why}' + (f' ({tail})' if tail else ''))


@pytest.fixture(scope='session')
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node SLURM of this machine, started for the session and stopped after it; yields the
    environment its client tools need (SLURM_CONF). Skips, naming what failed, where it cannot start."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    tools = {name: shutil.which(name, path=path) for name in ('munged', 'slurmctld', 'slurmd', 'sbatch', 'srun',
                                                              'scontrol', 'scancel', 'sinfo')}
    missing = [name for name, found in tools.items() if found is None]
    if missing:
        _skip(f'{", ".join(missing)} not installed (Debian: apt-get install slurm-wlm munge)')
    if os.geteuid() != 0:
        _skip(f'slurmd must run as root to start jobs; this is uid {os.geteuid()}')
    folder = tmp_path_factory.mktemp('slurm')
    for sub in ('munge', 'state', 'spool'):
        (folder / sub).mkdir(mode=0o700)
    key = folder / 'munge' / 'munge.key'
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    # The node as slurmd finds this machine (`slurmd -C`: CPUs=2 ... RealMemory=24105).
    node = dict(re.findall(r'(\w+)=(\d+)', subprocess.run([tools['slurmd'], '-C'], capture_output=True,
                                                          text=True).stdout))
    (folder / 'slurm.conf').write_text(_slurm_conf(folder, int(node.get('CPUs', 2)), int(node.get('RealMemory', 1000))))
    env = {**os.environ, 'SLURM_CONF': str(folder / 'slurm.conf')}
    munge = folder / 'munge'
    daemons = []   # in the foreground (-D, -F), each in a process of ours; munged first: the others ask it
    for name, command in (('munged', [tools['munged'], '-F', '--force', f'--key-file={key}',
                                      f'--socket={munge}/socket', f'--pid-file={munge}/pid',
                                      f'--log-file={munge}/log', f'--seed-file={munge}/seed']),
                          ('slurmctld', [tools['slurmctld'], '-D', '-i']),
                          ('slurmd', [tools['slurmd'], '-D', '-N', 'localhost'])):
        with open(folder / f'{name}.log', 'w') as log:
            daemons.append((name, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(1)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(['sinfo', '-h', '-o', '%T'], env=env, capture_output=True, text=True).stdout
            if state.strip() == 'idle':
                break
            dead = [name for name, process in daemons if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                _skip(f'{", ".join(dead) or "the node"} did not start (sinfo: {state.strip() or "no answer"})',
                      *(folder / f'{name}.log' for name, _ in daemons))
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(['scancel', '--full', '--user=root'], env=env, capture_output=True)
        subprocess.run(['scontrol', 'shutdown'], env=env, capture_output=True)   # slurmctld and slurmd
        for name, process in reversed(daemons):
            if name == 'munged':
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def submitted(out: str) -> str:
    """The job id of sbatch's `Submitted batch job N`."""
    return re.search(r'Submitted batch job (\d+)', out)[1]


def wait_for(what: str, done: Callable[[], bool], timeout: float, env: dict[str, str]) -> None:
    """Until `done()`, or fail with SLURM's queue."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            queue = subprocess.run(['squeue', '-o', '%i %j %T %r'], env=env, capture_output=True, text=True).stdout
            raise AssertionError(f'{what}: not within {timeout} s; the queue: {queue}')
        time.sleep(0.2)


def weights(exp: Path) -> dict[str, torch.Tensor]:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)['state_dict']


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb) and all(torch.equal(wa[k], wb[k]) for k in wa), f'{a} and {b}: weights differ'


@pytest.mark.slow
def test_a_submitted_sweep_runs_its_tasks_and_writes_its_summary_when_the_array_ends(
        slurm: dict[str, str], save_root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv('SLURM_CONF', slurm['SLURM_CONF'])
    assert run_py(save_root, '--config', DIGITS, '--name', 'sl', '--sweep', f'{LR}=1e-3,3e-3', '--launcher', 'slurm',
                  '--submit', '--sbatch', 'time=0:10:00', 'trainer_params.max_epochs=1', *ONE_THREAD) == 0
    job = submitted(capfd.readouterr().out)
    sweep = save_root / 'sl-sweep'
    wait_for('summary.md', (sweep / 'summary.md').is_file, 240, slurm)
    summary = (sweep / 'summary.md').read_text().splitlines()
    assert summary[:2] == ['| lr | val/acc (mean ± std) | runs |', '| --- | --- | --- |']
    assert [row.split(' | ')[0] for row in summary[2:]] == ['| 1e-3', '| 3e-3']
    assert all(row.endswith(' | 1/1 |') for row in summary[2:])   # both runs done
    for name in ('sl-lr=1e-3', 'sl-lr=3e-3'):
        assert (save_root / name / 'result.yaml').is_file()
    outputs = sorted(p.name for p in sweep.glob('slurm-*.out'))
    assert outputs[:2] == [f'slurm-{job}_0.out', f'slurm-{job}_1.out'] and len(outputs) == 3
    assert (sweep / 'summary.md').read_text() in (sweep / outputs[2]).read_text()   # the summary job printed it


@pytest.mark.slow
@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_a_task_stopped_by_usr1_is_requeued_and_ends_bit_identical(slurm: dict[str, str], save_root: Path,
                                                                   entry: str) -> None:
    """USR1 (SLURM's warning before the time limit) to the batch script: the run stops at its next
    batch, keeping the last epoch's last.ckpt, the task is requeued and its run, continued, ends
    bit-identical to an uninterrupted one."""
    run = ['--config', DIGITS, '--save-root', str(save_root), 'trainer_params.max_epochs=40', *ONE_THREAD]
    sweep = subprocess.run([sys.executable, entry, *run, '--name', 'rq', '--sweep', 'seed=0', '--launcher', 'slurm',
                            '--submit'], cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=120)
    assert sweep.returncode == 0, sweep.stderr
    job, exp = submitted(sweep.stdout), save_root / 'rq-seed=0'
    log = exp / 'log.txt'
    wait_for('epoch 2', lambda: log.is_file() and '\nepoch 2/40' in log.read_text(), 120, slurm)
    subprocess.run(['scancel', '--signal=USR1', '--batch', f'{job}_0'], env=slurm, check=True)
    wait_for('the requeued run', (exp / 'result.yaml').is_file, 180, slurm)
    log = log.read_text()
    stopped = [line for line in log.splitlines() if line.startswith('stopped by')]
    assert len(stopped) == 1 and stopped[0].startswith('stopped by SIGUSR1 at epoch '), log
    epoch = int(stopped[0].split('at epoch ')[1].split(',')[0])
    assert f'last.ckpt of epoch {epoch - 1} kept, epoch {epoch} runs again; slurm.sh requeues SLURM job {job}_0;' \
           in stopped[0]
    assert 'resumed: ' in log and log.count('epoch 40/40') == 1
    out = (save_root / 'rq-sweep' / f'slurm-{job}_0.out').read_text()
    assert out.count('lightyaml: task 0 stopping for a requeue') == 1 and out.count('Submitted batch job') == 1
    whole = subprocess.run([sys.executable, entry, *run, '--name', 'whole', 'seed=0'], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert_bit_identical(save_root / 'whole', exp)


@pytest.mark.slow
@pytest.mark.parametrize('entry,strategy', [('train.py', []), ('train_pl.py', ['trainer_params.strategy=ddp'])])
def test_srun_with_two_tasks_trains_one_ddp_run(slurm: dict[str, str], save_root: Path, entry: str,
                                                strategy: list[str]) -> None:
    """`srun --ntasks-per-node=2 python ENTRY ...`: the two tasks are one DDP run of two processes
    (one folder, each epoch logged once), the same, bit for bit, as two processes started here."""
    run = [entry, '--config', DIGITS, '--save-root', str(save_root), 'trainer_params.max_epochs=1',
           'trainer_params.accelerator=cpu', 'trainer_params.devices=2', *strategy, *ONE_THREAD]
    done = subprocess.run(['srun', '--ntasks-per-node=2', sys.executable, *run, '--name', 'srun'], cwd=ROOT,
                          env=slurm, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (save_root / 'srun' / 'log.txt').read_text().splitlines()
    assert sum(line.startswith('command: ') for line in log) == 1
    assert [line.split()[1] for line in log if line.startswith('epoch ')] == ['1/1']
    assert sorted(p.name for p in save_root.iterdir()) == ['srun']
    here = subprocess.run([sys.executable, *run, '--name', 'here'], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert here.returncode == 0, here.stderr[-3000:]
    assert_bit_identical(save_root / 'here', save_root / 'srun')
    if entry == 'train.py':   # a device count other than srun's tasks: one line from each task, nothing created
        refused = subprocess.run(['srun', '--ntasks-per-node=2', sys.executable, *run, '--name', 'three',
                                  'trainer_params.devices=3'], cwd=ROOT, env=slurm, capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode == 2 and 'Traceback' not in refused.stderr, refused.stderr
        assert [line for line in refused.stderr.splitlines() if line.startswith('error: ')] == 2 * [
            "error: override 'trainer_params.devices=3': trainer_params.devices: 3 devices, but srun "
            "(--ntasks-per-node=2) started 2 processes on this machine, one per device; set 2 or leave it out"]
        assert not (save_root / 'three').exists()


def test_the_array_script_under_set_u_outside_slurm_stops_on_usr1(save_root: Path) -> None:
    """slurm.sh run with plain bash, with SLURM's tools installed or not: USR1 stops the run and says
    nothing was requeued (no unbound variable), and running the task again continues it."""
    assert run_py(save_root, '--config', DIGITS, '--name', 'u', '--sweep', 'seed=0', '--launcher', 'slurm',
                  'trainer_params.max_epochs=300', *ONE_THREAD) == 0
    script, exp = save_root / 'u-sweep' / 'slurm.sh', save_root / 'u-seed=0'
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    task = subprocess.Popen(['bash', str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((exp / 'log.txt').is_file() and '\nepoch 1/' in (exp / 'log.txt').read_text()):
        assert time.monotonic() < deadline and task.poll() is None, task.communicate()
        time.sleep(0.05)
    task.send_signal(signal.SIGUSR1)
    out, err = task.communicate(timeout=120)
    assert task.returncode == 0 and 'unbound variable' not in err, err
    lines = out.splitlines()
    assert lines[-1] == 'lightyaml: not a SLURM job, nothing to requeue: run task 0 again to continue it', lines
    # The script says so as USR1 arrives; the run stops at its next batch, which may end an epoch first.
    after = lines[lines.index('lightyaml: task 0 stopping for a requeue') + 1:-1]
    assert all(line.startswith('epoch ') for line in after) and len(after) <= 1, lines
    stopped = [line for line in err.splitlines() if line.startswith('stopped by SIGUSR1')]
    assert len(stopped) == 1 and 'not a SLURM job: slurm.sh requeues nothing; resume with: ' in stopped[0], err
    assert not (exp / 'result.yaml').exists()
