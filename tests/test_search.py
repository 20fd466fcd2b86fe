"""Searches with Optuna (trials pruned, failed, retried; workers sharing SQLite or PostgreSQL),
sweeps identified by their whole config, SLURM array scripts, and --auto-resume."""
from __future__ import annotations

import csv
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import DIGITS, QUIET, ROOT, run_pl, run_py, snapshot

PNG = b'\x89PNG\r\n\x1a\n'
# Searches need optuna (requirements-optional.txt, which CI installs); sweeps and auto-resume do not.
needs_optuna = pytest.mark.skipif(importlib.util.find_spec('optuna') is None, reason='optuna is not installed')
LR = 'train_wrapper.args.optim_spec.args.lr'
DROPOUT = 'train_wrapper.args.model_spec.args.dropout'
SHORT = ['trainer_params.max_epochs=2', *QUIET]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def trials_of(folder: Path) -> list[dict]:
    with open(folder / 'summary.csv') as f:
        return list(csv.DictReader(f))


def kept_files(folder: Path) -> dict[str, bytes]:
    """`snapshot` less the files a run or search rewrites by design: its summary and plots, the
    study, and curves.png (redrawn whole as each run ends)."""
    rewritten = ('summary', 'history.png', 'importance.png', 'search.yaml', 'study.db')
    return {k: v for k, v in snapshot(folder).items() if not k.startswith(rewritten) and not k.endswith('curves.png')}


def load_study(folder: Path | None, name: str, storage: str | None = None):
    import optuna

    from lightyaml.launch.search_space import open_storage
    return optuna.load_study(study_name=name, storage=open_storage(storage or f'sqlite:///{folder}/study.db'))


# ------------------------------------------------------------------------------------------ search

GRID = f"""
sampler: {{name: grid}}
pruner: {{name: threshold, args: {{lower: 0.5}}}}
params:
  {LR}: {{choice: [3e-3, 1e-6]}}
  {DROPOUT}: {{choice: [0.2, 1.5]}}
"""


@needs_optuna
def test_a_grid_search_completes_prunes_and_fails_trials_and_continues_only_the_same_search(
        save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    search = write(tmp_path / 'grid.yaml', GRID)
    args = ['--config', DIGITS, '--name', 'g', '--search', search, '--workers', '2', *SHORT]
    assert run_py(save_root, *args) == 0
    folder = save_root / 'g-search'
    rows = {(float(r['lr']), float(r['dropout'])): r for r in trials_of(folder)}
    assert len(rows) == 4   # the whole grid, each point once (n_trials defaults to its size)
    complete, pruned = rows[(3e-3, 0.2)], rows[(1e-6, 0.2)]
    assert complete['state'] == 'COMPLETE'
    result = yaml.safe_load((folder / complete['folder'] / 'result.yaml').read_text())
    assert float(complete['val/acc']) == pytest.approx(result['best']['value']) and result['best']['value'] > 0.85
    # lr 1e-6 learns nothing: below the pruner's 0.5 after epoch 1, it stops there, its folder kept with a note.
    assert pruned['state'] == 'PRUNED' and pruned['note'].startswith('pruned after epoch 1: val/acc 0.')
    exp = folder / pruned['folder']
    assert yaml.safe_load((exp / 'trial.yaml').read_text())['state'] == 'PRUNED'
    assert sum(line.startswith('epoch ') for line in (exp / 'log.txt').read_text().splitlines()) == 1
    assert (exp / 'ckpt' / 'last.ckpt').is_file()
    for lr in (3e-3, 1e-6):   # dropout 1.5 cannot be built: failed, and the search went on
        failed = rows[(lr, 1.5)]
        assert (failed['state'] == 'FAIL' and 'model_spec.args.dropout: building' in failed['note']
                and 'dropout probability' in failed['note'])
    markdown = (folder / 'summary.md').read_text()
    assert markdown.startswith("4 trials of study 'g' (maximize val/acc); best: trial ")
    assert '| trial | state | val/acc | lr | dropout | folder | note |' in markdown
    for plot in ('history.png', 'importance.png'):
        assert (folder / plot).read_bytes().startswith(PNG)
    study = load_study(folder, 'g')
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert study.best_trial.user_attrs['folder'] == complete['folder']

    # The same command again: the study has its trials, nothing runs, no folder changes.
    before = kept_files(folder)
    capsys.readouterr()
    assert run_py(save_root, *args) == 0
    assert kept_files(folder) == before
    assert len(load_study(folder, 'g').trials) == 4
    # Other settings never continue this study: refused before anything changes.
    assert run_py(save_root, '--config', DIGITS, '--name', 'g', '--search', search, 'trainer_params.max_epochs=3',
                  *QUIET) == 2
    assert capsys.readouterr().err == (
        f"error: --search: study 'g' in sqlite:///{folder.resolve()}/study.db searches another config or space "
        f"(config.trainer_params.max_epochs: 2 then, 3 now); choose another --name\n")


@needs_optuna
def test_a_pruned_trials_yaml_holds_the_value_its_note_gives(tmp_path: Path) -> None:
    """A trial pruned after epoch 3 at 0.9148 whose best epoch was 0.9259: trial.yaml's value is the
    value it was pruned at, as its note and the summary say (issue 28: it held the best epoch's)."""
    import types

    import optuna

    from lightyaml.launch.search import Search, _run_trial
    folder = tmp_path / 's-search'
    folder.mkdir()
    script = (   # what the trial's run leaves when the pruner stops it: result.yaml and pruned.yaml
        f"import pathlib, sys; exp = pathlib.Path({str(folder)!r}) / sys.argv[sys.argv.index('--name') + 1]; "
        "exp.mkdir(); (exp / 'result.yaml').write_text('final: {}\\nbest: {monitor: val/acc, value: 0.9259}\\n'); "
        "(exp / 'pruned.yaml').write_text('{trial: 0, epoch: 2, metric: val/acc, value: 0.9148, "
        "pruner: {name: median}}\\n')")
    study = optuna.create_study(study_name='s', direction='maximize')
    spec = types.SimpleNamespace(suggest=lambda trial: [f'{LR}=0.1'], metric='val/acc', pruner={'name': 'median'})
    _run_trial(Search(study, None, 'sqlite:///unused', spec, folder, [sys.executable, '-c', script]),
               study.ask(), ([], {}))
    trial = yaml.safe_load((folder / 'trial-000' / 'trial.yaml').read_text())
    assert (trial['state'], trial['value']) == ('PRUNED', 0.9148)
    assert trial['note'] == 'pruned after epoch 3: val/acc 0.9148 (median pruner)'


@needs_optuna
def test_a_lightning_search_prunes_through_its_callback(save_root: Path, tmp_path: Path) -> None:
    search = write(tmp_path / 's.yaml', f"""
sampler: {{name: grid}}
pruner: {{name: threshold, args: {{lower: 0.5}}}}
params:
  {LR}: {{choice: [3e-3, 1e-6]}}
""")
    assert run_pl(save_root, '--config', DIGITS, '--name', 'pl', '--search', search, *SHORT) == 0
    folder = save_root / 'pl-search'
    states = {float(r['lr']): r for r in trials_of(folder)}
    assert states[3e-3]['state'] == 'COMPLETE' and float(states[3e-3]['val/acc']) > 0.85
    assert states[1e-6]['state'] == 'PRUNED'
    pruned = folder / states[1e-6]['folder']
    with open(pruned / 'metrics.csv') as f:   # stopped after its first validation
        assert [int(r['epoch']) for r in csv.DictReader(f) if r.get('val/acc')] == [0]
    study = load_study(folder, 'pl')
    assert [t.intermediate_values for t in study.trials if t.state.name == 'PRUNED'] == [
        {0: pytest.approx(float(states[1e-6]['val/acc']))}]


@needs_optuna
def test_bad_search_files_are_one_line_each_and_create_nothing(save_root: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    search = write(tmp_path / 'bad.yaml', f"""
n_trial: 3
sampler: {{name: tpee}}
pruner: {{name: median, args: {{n_warmup_step: 1}}}}
params:
  {LR}: {{float: [1e-2, 1e-4], log: true}}
  {DROPOUT}: {{uniform: [0, 1]}}
""")
    assert run_py(save_root, '--config', DIGITS, '--search', search) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {search}: n_trial: unknown key (did you mean 'n_trials'?); a search file has n_trials, metric, "
        f"direction, sampler, pruner, params",
        f'error: {search}: params.{LR}: float: expected [low, high] with low <= high, got [0.01, 0.0001]',
        f"error: {search}: params.{DROPOUT}: expected one of {{float: [low, high]}}, {{int: [low, high]}} or "
        f"{{choice: [a, b]}}, got {{'uniform': [0, 1]}}",
        f"error: {search}: sampler.name: unknown sampler 'tpee' (did you mean 'tpe'?); known: tpe, random, grid",
        f"error: {search}: pruner.args.n_warmup_step: MedianPruner does not take 'n_warmup_step' (did you mean "
        f"'n_warmup_steps'?)"]
    # A value out of a model's range is caught before the search starts (every range end is checked).
    typo = write(tmp_path / 'typo.yaml',
                 'n_trials: 2\nparams: {train_wrapper.args.optim_spec.args.lrr: {float: [0.1, 1]}}')
    assert run_py(save_root, '--config', DIGITS, '--search', typo) == 2
    assert "train_wrapper.args.optim_spec.args.lrr: optimizer 'Adam' does not take 'lrr'" in capsys.readouterr().err
    assert not save_root.exists()


@needs_optuna
def test_a_killed_search_retries_its_trial_from_the_trials_checkpoint(save_root: Path, tmp_path: Path) -> None:
    search = write(tmp_path / 'one.yaml', f'n_trials: 1\nparams: {{{LR}: {{float: [1e-3, 3e-3]}}}}\n')
    command = [sys.executable, 'train.py', '--config', DIGITS, '--name', 'k', '--save-root', str(save_root),
               '--search', search, 'trainer_params.max_epochs=6', *QUIET]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    ckpt = save_root / 'k-search' / 'trial-000' / 'ckpt' / 'last.ckpt'
    deadline = time.monotonic() + 240
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)   # the worker and its trial, mid-run
    first.wait()
    exp = save_root / 'k-search' / 'trial-000'
    assert not (exp / 'result.yaml').exists()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    first_trial, retry = load_study(save_root / 'k-search', 'k').trials
    assert first_trial.state.name == 'FAIL' and first_trial.user_attrs['note'] == \
        f'its worker (pid {first.pid}) stopped; retried'
    assert retry.state.name == 'COMPLETE' and retry.params == first_trial.params
    assert retry.user_attrs['folder'] == 'trial-000'   # continued in its folder, from its checkpoint
    log = (exp / 'log.txt').read_text().splitlines()
    resumed = next(i for i, line in enumerate(log) if line.startswith('resumed: '))
    epochs = [int(line.split()[1].split('/')[0]) for line in log[resumed:] if line.startswith('epoch ')]
    assert epochs[0] > 1 and epochs[-1] == 6   # continued from the killed attempt's checkpoint
    assert retry.value == yaml.safe_load((exp / 'result.yaml').read_text())['best']['value']


# ----------------------------------------------------------------------- PostgreSQL shared by two workers

@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server of our own on 127.0.0.1 (Debian's binaries, run as the postgres user
    when we are root), its data in a temporary folder; stopped and removed afterwards."""
    bins = sorted(glob.glob('/usr/lib/postgresql/*/bin/pg_ctl'))
    assert bins, 'PostgreSQL is not installed (.ci/run installs Debian\'s postgresql package)'
    bin_dir = Path(bins[-1]).parent
    as_db_user = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix='lightyaml-pg-'))
    if os.geteuid() == 0:
        shutil.chown(data, 'postgres')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run([*as_db_user, str(bin_dir / 'initdb'), '-D', str(data / 'db'), '-U', 'lightyaml',
                    '--auth=trust'], **run)
    subprocess.run([*as_db_user, str(bin_dir / 'pg_ctl'), '-D', str(data / 'db'), '-l', str(data / 'log'), '-w',
                    '-o', f"-p {port} -k {data} -c listen_addresses=127.0.0.1", 'start'], **run)
    try:
        yield f'postgresql://lightyaml@127.0.0.1:{port}/postgres'
    finally:
        subprocess.run([*as_db_user, str(bin_dir / 'pg_ctl'), '-D', str(data / 'db'), '-m', 'fast', '-w', 'stop'],
                       capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@needs_optuna
@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(postgres: str, tmp_path: Path) -> None:
    search = write(tmp_path / 'pg.yaml', f"""
n_trials: 4
sampler: {{name: random, args: {{seed: 0}}}}
pruner: {{name: none}}
params:
  {LR}: {{float: [1e-3, 1e-2], log: true}}
  data_module.args.batch_size: {{int: [16, 64], step: 16}}
""")
    command = [sys.executable, 'train.py', '--config', DIGITS, '--name', 'pg', '--search', search,
               '--storage', postgres, 'trainer_params.max_epochs=1', *QUIET]
    workers = [subprocess.Popen([*command, '--save-root', str(tmp_path / f'machine{i}')], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = load_study(None, 'pg', postgres).trials
    complete = [t for t in trials if t.state.name == 'COMPLETE']
    assert len(complete) == 4 and sorted(t.number for t in complete) == [0, 1, 2, 3]
    assert all(t.state.name == 'COMPLETE' or t.user_attrs.get('not_run') for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4   # no point twice
    # Each trial ran once, on the machine that asked for it: its folder there, nowhere else.
    ran = [(i, t.number) for t in complete for i in (0, 1)
           if (tmp_path / f'machine{i}' / 'pg-search' / f'trial-{t.number:03d}' / 'result.yaml').is_file()]
    assert sorted(n for _, n in ran) == [0, 1, 2, 3]
    assert {i for i, _ in ran} == {0, 1}   # both workers ran trials at once
    for machine, number in ran:
        note = yaml.safe_load((tmp_path / f'machine{machine}' / 'pg-search' / f'trial-{number:03d}' / 'trial.yaml')
                              .read_text())
        assert note['trial'] == number and note['state'] == 'COMPLETE'


# ------------------------------------------------------------------------------------------ sweeps

def test_sweep_names_use_the_shortest_unambiguous_key_and_seeds_alone_make_a_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightyaml.launch.sweep
    values = iter([0.5, 0.7, 0.9, 0.4, 0.6, 0.8])

    def fake_run(command: list[str], env: dict, label: str | None) -> int:
        assert label is None   # one run at a time: its lines go to the console as they are
        exp = Path(command[command.index('--save-root') + 1]) / command[command.index('--name') + 1]
        exp.mkdir(parents=True)
        (exp / 'result.yaml').write_text(f'final: {{}}\nbest: {{monitor: val/acc, value: {next(values)}}}\n')
        return 0
    monkeypatch.setattr(lightyaml.launch.sweep, 'run_process', fake_run)
    assert run_py(tmp_path, '--config', DIGITS, '--name', 's', '--seeds', '0,1,2') == 0
    assert (tmp_path / 's-sweep' / 'summary.md').read_text() == (
        '| val/acc (mean ± std) | runs |\n| --- | --- |\n| 0.7000 ± 0.2000 | 3/3 |\n')
    # Two swept keys ending in `split`: each named by its shortest suffix no other key ends with.
    assert run_py(tmp_path, '--config', DIGITS, '--name', 'two', '--sweep', 'data_module.args.train.args.split=train',
                  '--sweep', 'data_module.args.val.args.split=val,test') == 0
    assert yaml.safe_load((tmp_path / 'two-sweep' / 'sweep.yaml').read_text())['experiments'] == [
        'two-train.args.split=train-val.args.split=val', 'two-train.args.split=train-val.args.split=test']
    assert (tmp_path / 'two-sweep' / 'summary.md').read_text().startswith(
        '| train.args.split | val.args.split | val/acc (mean ± std) | runs |\n| --- | --- | --- | --- |\n'
        '| train | val | 0.4000 ± 0.0000 | 1/1 |')
    assert lightyaml.launch.sweep.short_keys([LR, 'train_wrapper.args.scheduler_spec.args.lr', 'seed']) == {
        LR: 'optim_spec.args.lr', 'train_wrapper.args.scheduler_spec.args.lr': 'scheduler_spec.args.lr',
        'seed': 'seed'}
    assert lightyaml.launch.sweep.combo_name('x', [f'{LR}=1e-3', 'a.lr=2']) == 'x-args.lr=1e-3-a.lr=2'


def test_a_sweep_run_again_with_other_settings_is_refused_before_anything_runs(
        save_root: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = ['--config', DIGITS, '--name', 'sw', '--sweep', f'{LR}=3e-3', 'trainer_params.max_epochs=1']
    assert run_py(save_root, *sweep) == 0
    exp = save_root / 'sw-lr=3e-3'
    assert yaml.safe_load((exp / 'config.yaml').read_text())['trainer_params']['max_epochs'] == 1
    before = kept_files(save_root)
    capsys.readouterr()
    assert run_py(save_root, *sweep[:-1], 'trainer_params.max_epochs=2') == 2
    assert capsys.readouterr().err == (
        f'error: --sweep: {exp} was run with another config (trainer_params.max_epochs: 1 then, 2 now); '
        f'choose another --name\n')
    assert kept_files(save_root) == before   # sweep.yaml still describes the runs it summarises


def test_worker_slots_split_the_cores_or_take_one_gpu_each() -> None:
    from lightyaml.launch.sweep import worker_slots
    cores = len(os.sched_getaffinity(0))
    assert worker_slots(None, 2) == [([], {'OMP_NUM_THREADS': str(max(1, cores // 2)),
                                           'MKL_NUM_THREADS': str(max(1, cores // 2))})] * 2   # the split is kept
    assert worker_slots(None, None) == [([], {})]
    assert worker_slots('0,1', None) == [(['--gpu', '0'], {}), (['--gpu', '1'], {})]


# ------------------------------------------------------------------------------------------- SLURM

@needs_optuna
def test_slurm_array_scripts_requeue_and_run_one_task_here(save_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = ['--config', DIGITS, '--name', 'sl', '--sweep', f'{LR}=1e-3,3e-3', '--launcher', 'slurm',
             '--sbatch', 'time=1:00:00', *SHORT]
    assert run_py(save_root, *sweep) == 0
    script = save_root / 'sl-sweep' / 'slurm.sh'
    text = script.read_text()
    for line in ('#SBATCH --array=0-1', '#SBATCH --requeue', '#SBATCH --signal=B:USR1@90', '#SBATCH --time=1:00:00',
                 'trap requeue USR1', 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${task}"',
                 'sbatch --dependency=afterany:"$SLURM_ARRAY_JOB_ID" '):
        assert line in text
    assert text.count('--auto-resume') == 2 and not (save_root / 'sl-lr=1e-3').exists()
    # Task 1 runs here with bash (not a SLURM job: nothing submitted or requeued): its grid point only.
    done = subprocess.run(['bash', str(script)], env={**os.environ, 'SLURM_ARRAY_TASK_ID': '1'},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (save_root / 'sl-lr=3e-3' / 'result.yaml').is_file() and not (save_root / 'sl-lr=1e-3').exists()
    # Preempted (USR1 to the batch shell): the run stops; the requeued task continues it in place.
    task0 = subprocess.Popen(['bash', str(script)], env={**os.environ, 'SLURM_ARRAY_TASK_ID': '0'},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = save_root / 'sl-lr=1e-3'
    deadline = time.monotonic() + 240
    while not (exp / 'log.txt').exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    task0.send_signal(signal.SIGUSR1)
    assert task0.wait(timeout=120) == 0   # with SLURM's tools installed or not: no SLURM job, nothing requeued
    assert 'lightyaml: task 0 stopping for a requeue' in (out := task0.stdout.read()) and 'unbound' not in out
    assert not (exp / 'result.yaml').exists()
    again = subprocess.run(['bash', str(script)], env={**os.environ, 'SLURM_ARRAY_TASK_ID': '0'},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    log = (exp / 'log.txt').read_text()
    assert (exp / 'result.yaml').is_file() and ('resumed: ' in log or 'restarted from the start' in log)
    # A search: one array task per worker, each against the same storage.
    search = write(tmp_path / 's.yaml', f'n_trials: 9\nparams: {{{LR}: {{float: [1e-3, 1e-2]}}}}\n')
    assert run_py(save_root, '--config', DIGITS, '--name', 'ss', '--search', search, '--workers', '3',
                  '--launcher', 'slurm', '--storage', 'postgresql://u@db/x') == 0
    text = (save_root / 'ss-search' / 'slurm.sh').read_text()
    assert '#SBATCH --array=0-2' in text and text.count("--storage postgresql://u@db/x --workers 1") == 3
    capsys.readouterr()
    monkeypatch.setenv('PATH', str(tmp_path / 'no-slurm-here'))   # a machine without SLURM's tools
    assert run_py(save_root, '--config', DIGITS, '--name', 'ss2', '--search', search, '--launcher', 'slurm',
                  '--submit') == 2
    assert capsys.readouterr().err == ('error: --submit: sbatch is not on this machine; leave out --submit to only '
                                       'write the script\n')


# ------------------------------------------------------------------------------------- auto-resume

def test_auto_resume_starts_continues_or_refuses_and_resume_restarts_a_run_without_checkpoint(
        save_root: Path, capsys: pytest.CaptureFixture) -> None:
    run = ['--config', DIGITS, '--name', 'a', '--auto-resume', 'trainer_params.max_epochs=1']
    assert run_py(save_root, *run) == 0   # no folder: started
    exp = save_root / 'a'
    assert (exp / 'result.yaml').is_file()
    before = kept_files(exp)
    capsys.readouterr()
    assert run_py(save_root, *run) == 0
    assert capsys.readouterr().out.endswith(f'{exp} has finished (result.yaml); nothing to do\n')
    assert run_pl(save_root, *run[:-1], 'trainer_params.max_epochs=2') == 2
    assert capsys.readouterr().err == (f'error: --auto-resume: {exp} was run with another config '
                                       f'(trainer_params.max_epochs: 1 then, 2 now); choose another --name, or '
                                       f'--resume it with overrides\n')
    assert kept_files(exp) == before
    # Killed before its first checkpoint (config.yaml and a partial metrics.csv, no ckpt/last.ckpt):
    # --resume starts it again in place, the killed attempt's metrics set aside.
    killed = save_root / 'killed'
    (killed / 'ckpt').mkdir(parents=True)
    shutil.copy(exp / 'config.yaml', killed / 'config.yaml')
    (killed / 'metrics.csv').write_text('step,train/loss_step\n9,2.3\n')
    assert run_py(save_root, '--resume', str(killed)) == 0
    log = (killed / 'log.txt').read_text()
    assert 'restarted from the start (no checkpoint was written): python train.py --resume' in log
    with open(killed / 'metrics.csv') as f:
        assert [int(r['epoch']) for r in csv.DictReader(f) if r.get('val/acc')] == [0]
    assert [p.read_text() for p in killed.glob('metrics.csv.killed-*')] == ['step,train/loss_step\n9,2.3\n']
    assert (killed / 'result.yaml').is_file()
