"""--runs, --diff and --compare on folders made by real short runs (finished, resumed, fine-tuned,
swept, failed on a non-finite loss or on an error under way, killed with SIGKILL, stopped with
SIGTERM, and one still running), and the line that ends every run. Every state comes from the
files; nothing is written into an experiment folder by these commands."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import DIGITS, QUIET, ROOT, run_pl, run_py, snapshot

SMALL = ['train_wrapper.args.model_spec.args.hidden=[16]']
LR = 'train_wrapper.args.optim_spec.args.lr'
# From epoch 2 on the learning rate is multiplied by 1e30: the loss overflows within steps.
EXPLODE = ['train_wrapper.args.scheduler_spec={name: MultiStepLR, args: {milestones: [1], gamma: 1.0e+30}}',
           'trainer_params.max_epochs=3', 'train_wrapper.args.optim_spec.name=SGD',
           'train_wrapper.args.optim_spec.args={lr: 0.1}']
# A scheduler monitoring what is not logged yet: an error once the folder exists (tests/test_architecture.py).
PLATEAU = ['train_wrapper.args.scheduler_spec={name: ReduceLROnPlateau, monitor: val/acc, args: {mode: max}}',
           'trainer_params.check_val_every_n_epoch=2', 'trainer_params.max_epochs=2',
           'trainer_params.limit_train_batches=2']
DONE = re.compile(r'^done: best val/acc (\d\.\d{4}) at epoch (\d+) -> (\S+) \(ckpt/(\S+\.ckpt), curves\.png, '
                  r'result\.yaml\)$')


@dataclasses.dataclass
class Farm:
    """A save root of real runs, what they printed, and --runs while one of them was running."""
    save: Path
    printed: str            # stdout of the in-process runs
    running_table: str      # --runs while `term` trained
    running_pid: int
    term_status: int


def answer(*args: str) -> tuple[int, str]:
    """`python train_pl.py ARGS` in-process: its exit status and stdout."""
    import train_pl
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = train_pl.main(list(args))
    return status, out.getvalue()


def train_in_background(script: str, save: Path, name: str) -> subprocess.Popen:
    """A long run of `script` in a process of its own, returned once log.txt has its first epoch line."""
    command = [sys.executable, script, '--config', DIGITS, '--save-root', str(save), '--name', name, *SMALL, *QUIET,
               'trainer_params.max_epochs=100000']
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline = save / name / 'log.txt', time.monotonic() + 120
    while not (log.is_file() and '\nepoch ' in log.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f'{name}: no epoch line: {process.communicate()[1][-2000:]}')
        time.sleep(0.1)
    return process


@pytest.fixture(scope='module')
def farm(tmp_path_factory: pytest.TempPathFactory) -> Farm:
    save = tmp_path_factory.mktemp('runs') / 'save'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_pl(save, '--config', DIGITS, '--name', 'first', *SMALL, 'trainer_params.max_epochs=2') == 0
        assert run_pl(save, '--resume', str(save / 'first'), 'trainer_params.max_epochs=3') == 0
        assert run_py(save, '--config', DIGITS, '--name', 'tuned', '--tag', 'v2', '--init-from', str(save / 'first'),
                      *SMALL, 'trainer_params.max_epochs=1') == 0
        assert run_py(save, '--config', DIGITS, '--name', 'nan', *SMALL, *EXPLODE) == 1
        assert run_py(save, '--config', DIGITS, '--name', 'plateau', *SMALL, *PLATEAU) == 2
        assert run_py(save, '--config', DIGITS, '--name', 'lrs', '--sweep', f'{LR}=1e-3,1e-2', '--workers', '2',
                      *SMALL, 'trainer_params.max_epochs=1') == 0
    killed = train_in_background('train.py', save, 'kill')
    term = train_in_background('train_pl.py', save, 'term')
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        status, running = answer('--runs', '--save-root', str(save))
        assert status == 0
        term.send_signal(signal.SIGTERM)
        term.wait(timeout=120)
    finally:
        for process in (killed, term):
            if process.poll() is None:
                process.kill()
                process.wait()
    return Farm(save, out.getvalue(), running, term.pid, term.returncode)


def rows(table: str) -> dict[str, dict[str, str]]:
    """The --runs table as {name: {column: cell}} (cells are two spaces or more apart)."""
    lines = table.split('\n\n')[0].splitlines()
    header = re.split(r'\s{2,}', lines[0])
    return {cells[0]: dict(zip(header, cells)) for cells in (re.split(r'\s{2,}', line) for line in lines[1:])}


def last_value(exp: Path, metric: str) -> float:
    """The last value of `metric` in an experiment's metrics.csv."""
    with open(exp / 'metrics.csv') as f:
        return [float(row[metric]) for row in csv.DictReader(f) if row.get(metric)][-1]


def last_log_line(exp: Path) -> str:
    return (exp / 'log.txt').read_text().splitlines()[-1]


def test_every_state_is_told_apart_from_the_files(farm: Farm) -> None:
    status, table = answer('--runs', '--save-root', str(farm.save))
    assert status == 0
    runs = rows(table)
    assert {name: row['state'] for name, row in runs.items()} == {
        'first': 'finished', 'tuned_v2': 'finished', 'nan': 'failed', 'plateau': 'failed', 'lrs-lr=1e-3': 'finished',
        'lrs-lr=1e-2': 'finished', 'kill': 'killed', 'term': 'stopped (SIGTERM)'}
    assert farm.term_status == 128 + signal.SIGTERM
    assert list(runs)[:2] == ['term', 'kill']   # newest first
    started = [row['started'] for row in runs.values()]
    assert started == sorted(started, reverse=True)
    # The best monitored value and its epoch: result.yaml's value, the epoch metrics.csv reached it in.
    result = yaml.safe_load((farm.save / 'first' / 'result.yaml').read_text())
    with open(farm.save / 'first' / 'metrics.csv') as f:
        accuracies = {int(r['epoch']) + 1: float(r['val/acc']) for r in csv.DictReader(f) if r['val/acc']}
    best_epoch = min(e for e, v in accuracies.items() if v == max(accuracies.values()))
    assert runs['first']['best'] == f"val/acc {result['best']['value']:.4f} (epoch {best_epoch})"
    assert (runs['first']['epochs'], runs['first']['parent'], runs['first']['tag']) == ('3/3', 'resumed 1x', '-')
    assert (runs['tuned_v2']['epochs'], runs['tuned_v2']['parent'], runs['tuned_v2']['tag']) == (
        '1/1', 'init-from first', 'v2')
    assert runs['lrs-lr=1e-3']['parent'] == runs['lrs-lr=1e-2']['parent'] == 'sweep lrs-sweep'
    assert runs['kill']['epochs'].endswith('/100000') and runs['kill']['parent'] == '-'
    assert runs['nan']['epochs'] == '1/3' and runs['plateau']['best'] == 'val/acc -'
    # What each failure said, as its log.txt ends with it, and where the sweep's own folder is.
    notes = table.split('\n\n')[1].splitlines()
    assert f"nan: {last_log_line(farm.save / 'nan')}" in notes
    assert last_log_line(farm.save / 'nan').startswith('error: non-finite training loss in epoch 2 ')
    assert f"plateau: {last_log_line(farm.save / 'plateau')}" in notes
    assert last_log_line(farm.save / 'plateau').startswith("error: scheduler_spec.monitor: 'val/acc' was not logged")
    assert notes[-1] == f"lrs-sweep: a sweep of 2 runs (--runs {farm.save / 'lrs-sweep'})"
    assert any(line.startswith('killed: ended without a line in log.txt') for line in notes)


def test_a_run_under_way_is_running_with_its_pid(farm: Farm) -> None:
    assert rows(farm.running_table)['term']['state'] == f'running (pid {farm.running_pid})'
    assert rows(farm.running_table)['kill']['state'] == 'killed'


def test_a_sweeps_folder_lists_its_runs(farm: Farm) -> None:
    status, table = answer('--runs', str(farm.save / 'lrs-sweep'), '--save-root', str(farm.save / 'elsewhere'))
    assert status == 0 and sorted(rows(table)) == ['lrs-lr=1e-2', 'lrs-lr=1e-3']   # run at once: either first
    assert '\n\n' not in table   # nothing else to say


def test_sort_filter_and_name_patterns(farm: Farm) -> None:
    def names(*flags: str) -> list[str]:
        status, table = answer('--runs', *flags, '--save-root', str(farm.save))
        assert status == 0
        return list(rows(table))
    by_accuracy = names('--sort', 'val/acc')
    best = {name: float(row['best'].split()[1]) for name, row in rows(answer('--runs', '--save-root',
                                                                            str(farm.save))[1]).items()
            if row['best'] != 'val/acc -'}
    # The table shows four decimals; runs that tie there may be ordered by the digits it does not show.
    assert set(by_accuracy[:len(best)]) == set(best) and by_accuracy[-1] == 'plateau'
    assert [best[n] for n in by_accuracy[:len(best)]] == sorted(best.values(), reverse=True)
    assert names('--sort', 'val/acc', '--reverse')[:len(best)] == by_accuracy[:len(best)][::-1]
    losses = {name: last_value(farm.save / name, 'val/loss') for name in best}
    by_loss = names('--sort', 'val/loss')[:len(best)]   # a loss: lowest first
    assert set(by_loss) == set(best) and [losses[n] for n in by_loss] == sorted(losses.values())
    assert names('--sort', 'epochs', '--reverse') == names('--sort', 'epochs')[::-1]
    assert names('--sort', 'name') == sorted(best | {'plateau': 0})
    assert sorted(names('--state', 'killed,failed')) == ['kill', 'nan', 'plateau']
    assert names('lrs*', '--sort', 'name') == names('lrs', '--sort', 'name') == ['lrs-lr=1e-2', 'lrs-lr=1e-3']
    assert names(str(farm.save / 'k*')) == ['kill']
    assert answer('--runs', 'nothing-like-it', '--save-root', str(farm.save)) == (
        0, f'no experiments in {farm.save} (for --runs nothing-like-it)\n')


def test_ties_stay_newest_first_and_reverse_turns_the_whole_order_round(tmp_path: Path) -> None:
    from lightyaml.launch.runs import sort_runs
    from lightyaml.run.run_state import RunState

    def run(name: str, best: float, started: str, epochs: int) -> RunState:
        return RunState(tmp_path / name, 'finished', monitor='val/acc', mode='max', best=best, started=started,
                        epochs=epochs)
    runs = [run('old', 0.9, '2026-12-01T10:00:00', 3), run('new', 0.9, '2026-12-03T10:00:00', 3),
            run('mid', 0.95, '2026-12-02T10:00:00', 3), run('low', 0.5, '2026-12-04T10:00:00', 1)]
    for key, order in (('val/acc', ['mid', 'new', 'old', 'low']), ('epochs', ['new', 'mid', 'old', 'low']),
                       (None, ['low', 'new', 'mid', 'old'])):
        assert [r.name for r in sort_runs(runs, key, False)] == order, key
        assert [r.name for r in sort_runs(runs, key, True)] == order[::-1], key


@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_the_answers_import_neither_torch_nor_lightning(farm: Farm, script: str, tmp_path: Path) -> None:
    code = ('import runpy, sys\nsys.argv = [{script!r}, *{argv!r}]\ntry:\n    runpy.run_path({script!r}, '
            'run_name="__main__")\nexcept SystemExit as e:\n    status = e.code\n'
            'print(status, sorted(m for m in ("torch", "pytorch_lightning", "lightning") if m in sys.modules))')
    for argv in (['--runs'], ['--diff', 'first', 'tuned_v2'], ['--compare', 'first', 'kill', '--out',
                                                                str(tmp_path / 'c.png')]):
        argv = [*argv, '--save-root', str(farm.save)]
        done = subprocess.run([sys.executable, '-c', code.format(script=script, argv=argv)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.splitlines()[-1] == f"{1 if '--diff' in argv else 0} []", done.stderr[-2000:]
        assert done.stdout.splitlines()[:-1] == answer(*argv)[1].splitlines(), argv   # both entry points alike


def test_diff_names_each_differing_key_with_both_values_and_their_origins(farm: Farm) -> None:
    status, text = answer('--diff', 'lrs-lr=1e-3', 'lrs-lr=1e-2', '--save-root', str(farm.save))
    assert status == 1
    a, b = farm.save / 'lrs-lr=1e-3', farm.save / 'lrs-lr=1e-2'
    assert text.split('\n\n')[0].splitlines() == [
        f'--- {a}', f'+++ {b}', f'{LR}:', f"- 0.001  # override '{LR}=1e-3'", f"+ 0.01   # override '{LR}=1e-2'",
        '1 key differs']
    header, *lines = text.split('\n\n')[1].splitlines()
    metrics = {cells[0]: cells[1:] for cells in (re.split(r'\s{2,}', line) for line in lines)}
    finals = [yaml.safe_load((p / 'result.yaml').read_text())['final'] for p in (a, b)]
    assert header.split() == [str(a), str(b)] and metrics['state'] == ['finished', 'finished']
    assert metrics['final val/loss'] == [f"{finals[0]['val/loss']:.4f}", f"{finals[1]['val/loss']:.4f}"]
    assert metrics['best'] == [rows(answer('--runs', str(p))[1])[p.name]['best'] for p in (a, b)]
    # A run and the file it came from: the keys set on the command line, named; the seed and thread
    # count the run decided match a file that leaves them unset.
    status, text = answer('--diff', str(farm.save / 'tuned_v2'), DIGITS, '--save-root', str(farm.save))
    assert status == 1
    lines = text.split('\n\n')[0].splitlines()
    keys = [line[:-1] for line in lines[2:-1] if line.endswith(':')]
    assert keys == ['train_wrapper.args.model_spec.args.hidden', 'trainer_params.max_epochs',
                    'trainer_params.enable_progress_bar']
    assert lines[lines.index('trainer_params.max_epochs:') + 1:][:2] == [
        "- 1   # override 'trainer_params.max_epochs=1'", '+ 30  # configs/digits.yaml']
    assert lines[-1] == '3 keys differ'
    assert answer('--diff', 'first', 'first', '--save-root', str(farm.save))[1].startswith(
        f"same config: {farm.save / 'first'} and {farm.save / 'first'}\n")
    assert answer('--diff', 'first', 'first', '--save-root', str(farm.save))[0] == 0


def test_compare_draws_the_runs_in_one_picture_and_writes_their_values(farm: Farm, tmp_path: Path) -> None:
    before = snapshot(farm.save)
    status, text = answer('--compare', 'first', 'kill', 'nan', '--out', str(tmp_path / 'c.png'),
                          '--save-root', str(farm.save))
    assert status == 0 and text.splitlines()[-1] == f"wrote {tmp_path / 'c.png'} and {tmp_path / 'c.csv'}"
    assert (tmp_path / 'c.png').read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
    with open(tmp_path / 'c.csv') as f:
        table = list(csv.DictReader(f))
    runs = rows(answer('--runs', '--save-root', str(farm.save))[1])
    assert [(r['experiment'], r['state'], r['monitor']) for r in table] == [
        ('first', 'finished', 'val/acc'), ('kill', 'killed', 'val/acc'), ('nan', 'failed', 'val/acc')]
    for row in table:
        assert f"val/acc {float(row['best']):.4f} (epoch {row['best_epoch']})" == runs[row['experiment']]['best']
    final = yaml.safe_load((farm.save / 'first' / 'result.yaml').read_text())['final']
    assert float(table[0]['final val/loss']) == pytest.approx(final['val/loss'], rel=1e-5)
    assert answer('--compare', 'first', 'tuned_v2', '--save-root', str(farm.save))[0] == 0   # by default in the root
    assert (farm.save / 'compare.png').is_file() and (farm.save / 'compare.csv').is_file()
    (farm.save / 'compare.png').unlink()
    (farm.save / 'compare.csv').unlink()
    assert snapshot(farm.save) == before   # no experiment folder changed


@pytest.mark.parametrize('argv, line', [
    (['--diff', 'first', 'nope'], 'error: --diff nope: no such experiment folder or YAML file (nor {save}/nope)'),
    (['--diff', 'first', 'junk'], 'error: --diff junk: no config.yaml there; is it an experiment folder?'),
    (['--compare', 'first'], 'error: --compare first: give two experiments or more (--plot draws the curves of one)'),
    (['--compare', 'first', 'kill', '--out', '{save}/first/c.png'],
     'error: --compare --out {save}/first/c.png: inside the experiment {save}/first, and --compare writes into no '
     'experiment; write it somewhere else (e.g. --out compare.png)'),
    (['--compare', 'first', 'kill', '--out', 'c.jpg'],
     'error: --compare --out c.jpg: the picture is a PNG; give a name ending in .png (e.g. c.png)'),
    (['--runs', '--sort', 'val/f1'], "error: --sort val/f1: no run here logged it (did you mean 'val/acc'?); sort by "
                                     'name, state, epochs, time, started or a metric: train/loss, val/acc, val/loss, '
                                     'val/top3'),
    (['--runs', '--state', 'finsihed'], "error: --state finsihed: not a state a run can be in (did you mean "
                                        "'finished'?); states: running, finished, pruned, stopped, failed, killed, "
                                        'half-written, foreign'),
    (['--runs', '{save}/nope/x'], 'error: --runs {save}/nope/x: no such folder'),
    (['--runs', '--sort', 'name', 'x.y=1'], "error: --runs: takes no overrides ('x.y=1'); it reads experiments as "
                                            'they are'),
], ids=['diff-missing', 'diff-not-an-experiment', 'compare-one', 'compare-into-a-run', 'compare-not-png',
        'sort-unknown-metric', 'state-typo', 'runs-no-folder', 'runs-overrides'])
def test_bad_input_is_one_line_and_changes_nothing(farm: Farm, argv: list[str], line: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    (farm.save / 'junk').mkdir(exist_ok=True)
    before = snapshot(farm.save)
    assert answer(*(a.format(save=farm.save) for a in argv), '--save-root', str(farm.save))[0] == 2
    assert capsys.readouterr().err == line.format(save=farm.save) + '\n'
    assert snapshot(farm.save) == before


def test_broken_half_written_and_foreign_folders_are_listed_as_such(farm: Farm, tmp_path: Path) -> None:
    save = tmp_path / 'save'
    for name in ('bad-result', 'bad-metrics', 'bad-config'):
        shutil.copytree(farm.save / 'first', save / name)
    (save / 'bad-result' / 'result.yaml').write_text('final: [unclosed\n')
    (save / 'bad-metrics' / 'metrics.csv').write_bytes(b'epoch,val/acc\n\xff\xfe,oops\n0,')
    (save / 'bad-config' / 'config.yaml').write_text('# 2026-01-01T00:00:00: python train.py\ncheckpoint: [\n')
    (save / 'half').mkdir()
    shutil.copy(farm.save / 'first' / 'config.yaml', save / 'half')
    (save / 'foreign').mkdir()
    (save / 'foreign' / 'config.yaml').write_text('lr: 0.1\n')
    (save / 'foreign' / 'log.txt').write_text('step 1 loss 3.2\n')
    (save / 'lightning_logs' / 'version_0').mkdir(parents=True)
    (save / 'notes.txt').write_text('a file, not a folder\n')
    before = snapshot(save)
    status, table = answer('--runs', '--sort', 'name', '--save-root', str(save))
    assert status == 0 and snapshot(save) == before
    runs = rows(table)
    first = rows(answer('--runs', '--save-root', str(farm.save))[1])['first']
    assert runs['bad-result'] == {**first, 'name': 'bad-result'}   # its best read from metrics.csv instead
    assert runs['bad-metrics'] == {**first, 'name': 'bad-metrics', 'best': first['best'].split(' (epoch')[0]}
    assert runs['bad-config'] == {**first, 'name': 'bad-config', 'started': '2026-01-01 00:00', 'parent': '-'}
    assert (runs['half']['state'], runs['foreign']['state']) == ('half-written', 'foreign')
    notes = table.split('\n\n')[1].splitlines()
    assert notes == ['foreign: log.txt has no command line: not a lightyaml run',
                     'half: no log.txt: stopped while its folder was being made, or not a run',
                     'lightning_logs: not an experiment (no config.yaml)']


def test_every_run_ends_with_one_line_saying_where_things_are(farm: Farm) -> None:
    """The same line on the console and at the end of log.txt, from both entry points: the best
    monitored value and its epoch, the checkpoint and the folder."""
    printed = [line for line in farm.printed.splitlines() if line.startswith('done')]
    assert len(printed) == 3   # first, first resumed, tuned_v2 (the sweep's runs printed in their processes)
    for exp, line in zip([farm.save / 'first', farm.save / 'tuned_v2'], printed[1:]):
        assert line == last_log_line(exp)
        value, epoch, folder, ckpt = DONE.match(line).groups()
        result = yaml.safe_load((exp / 'result.yaml').read_text())['best']
        assert (float(value), folder, ckpt) == (round(result['value'], 4), str(exp), result['checkpoint'])
        assert rows(answer('--runs', str(exp))[1])[exp.name]['best'] == f'val/acc {value} (epoch {epoch})'
    for name in ('lrs-lr=1e-3', 'lrs-lr=1e-2'):
        assert DONE.match(last_log_line(farm.save / name))
    assert not re.search(r'^(GPU|TPU) available|^`Trainer.fit` stopped', farm.printed, re.M)


@pytest.mark.slow   # a search: its workers and trials are processes of their own
@pytest.mark.skipif(importlib.util.find_spec('optuna') is None, reason='optuna is not installed')
def test_a_searchs_folder_lists_its_trials(tmp_path: Path) -> None:
    search = tmp_path / 'search.yaml'
    search.write_text(f'n_trials: 2\nsampler: {{name: random, args: {{seed: 0}}}}\npruner: {{name: none}}\n'
                      f'params:\n  {LR}: {{float: [1.0e-3, 1.0e-2], log: true}}\n')
    save = tmp_path / 'save'
    assert run_py(save, '--config', DIGITS, '--name', 'lrs', '--search', str(search), *SMALL,
                  'trainer_params.max_epochs=1') == 0
    status, table = answer('--runs', str(save / 'lrs-search'), '--sort', 'name')
    assert status == 0
    assert {name: (row['state'], row['parent']) for name, row in rows(table).items()} == {
        'trial-000': ('finished', 'search lrs-search'), 'trial-001': ('finished', 'search lrs-search')}
    assert answer('--runs', '--save-root', str(save))[1] == (
        f"lrs-search: a search, 2 trials (--runs {save / 'lrs-search'})\n")
