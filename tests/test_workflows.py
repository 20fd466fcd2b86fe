"""After training: callbacks from config, --test, --predict, sweeps over a grid and seeds, plots."""
from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DIGITS, QUIET, ROOT, evaluate, run_pl, run_py
from utils import CALLBACKS, DATASETS

PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch digits run to test and predict with."""
    save_root = tmp_path_factory.mktemp('save')
    assert run_pl(save_root, '--config', DIGITS, '--name', 'run', 'trainer_params.max_epochs=3') == 0
    return save_root / 'run'


def test_a_finished_run_records_its_result_and_plots_its_curves(trained: Path) -> None:
    result = yaml.safe_load((trained / 'result.yaml').read_text())
    assert result['best']['monitor'] == 'val/acc' and (trained / 'ckpt' / result['best']['checkpoint']).is_file()
    assert result['final']['val/acc'] <= result['best']['value']
    assert (trained / 'curves.png').read_bytes().startswith(PNG)
    assert (trained / 'log.txt').read_text().splitlines()[-1].startswith('done: best val/acc ')


@pytest.mark.parametrize('entry', ['train_pl.py', 'train.py'])
def test_test_evaluates_the_best_checkpoint_and_records_it(entry: str, trained: Path) -> None:
    from models.wrappers.base import BaseWrapper
    run = run_pl if entry == 'train_pl.py' else run_py
    assert run(trained.parent, '--test', str(trained)) == 0
    best = yaml.safe_load((trained / 'result.yaml').read_text())['best']['checkpoint']
    wrapper = BaseWrapper.load_from_checkpoint(trained / 'ckpt' / best, map_location='cpu', weights_only=True)
    tests = yaml.safe_load((trained / 'test.yaml').read_text())
    assert tests[best]['test/acc'] == pytest.approx(evaluate(wrapper, 'test'), abs=1e-6)
    assert (trained / 'log.txt').read_text().splitlines()[-1].startswith(f'test ({best}): test/acc ')


def test_predict_on_a_dataset_spec_and_on_a_folder_of_images(trained: Path, tmp_path: Path) -> None:
    import torchvision

    from lightyaml.train.task import Task
    assert run_py(trained.parent, '--predict', str(trained), '--ckpt', 'last', '--out', str(tmp_path / 'spec.csv'),
                  '--data', '{name: digits, args: {split: val}}') == 0
    state = torch.load(trained / 'ckpt' / 'last.ckpt', weights_only=True)
    task = Task(**state['hyper_parameters'])
    task.load_state_dict(state['state_dict'])
    task.eval()
    val = DATASETS.make({'name': 'digits', 'args': {'split': 'val'}})
    with torch.no_grad():
        expected = task.model(val.tensors).argmax(1).tolist()
    with open(tmp_path / 'spec.csv') as f:
        assert [int(r['pred']) for r in csv.DictReader(f)] == expected
    # A folder of PNG files named by their label, read back at the training images' size.
    folder = tmp_path / 'images'
    folder.mkdir()
    for i in range(40):
        torchvision.utils.save_image(val[i]['image'], folder / f'{i:02d}-label{int(val[i]["label"])}.png')
    assert run_pl(trained.parent, '--predict', str(trained), '--data', str(folder)) == 0
    with open(trained / 'predictions.csv') as f:
        rows = list(csv.DictReader(f))
    assert [Path(r['file']).name for r in rows] == sorted(p.name for p in folder.iterdir())
    correct = sum(int(r['pred']) == int(Path(r['file']).stem.split('label')[1]) for r in rows)
    assert correct / len(rows) >= 0.85
    assert all(0 < float(r['prob']) <= 1 for r in rows)


def test_callbacks_by_name_from_lightning_and_validated(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert {'EarlyStopping', 'LearningRateMonitor', 'StochasticWeightAveraging', 'RichProgressBar'} <= set(
        CALLBACKS.names())
    callbacks = ('callbacks=[{name: EarlyStopping, args: {monitor: val/acc, mode: max, patience: 0, min_delta: 0.5}},'
                 ' {name: LearningRateMonitor, args: {logging_interval: epoch}}]')
    assert run_pl(save_root, '--config', DIGITS, '--name', 'early', callbacks) == 0
    log = (save_root / 'early' / 'log.txt').read_text()
    assert sum(line.startswith('epoch ') for line in log.splitlines()) == 2   # stopped after patience 0
    with open(save_root / 'early' / 'metrics.csv') as f:
        assert 'lr-Adam' in next(csv.reader(f))
    assert run_pl(save_root, '--config', DIGITS, 'callbacks=[{name: EarlyStoping, args: {patiance: 1}}]') == 2
    assert capsys.readouterr().err.startswith(
        "error: override 'callbacks=[{name: EarlyStoping, args: {patiance: 1}}]': callbacks.0.name: unknown callback "
        "'EarlyStoping' (did you mean 'EarlyStopping'?)")
    assert run_pl(save_root, '--config', DIGITS, 'callbacks=[{name: EarlyStopping, args: {patiance: 1}}]') == 2
    assert "callbacks.0.args.patiance: callback 'EarlyStopping' does not take 'patiance' (did you mean 'patience'?)" \
        in capsys.readouterr().err


def test_plot_overlays_several_experiments(trained: Path, tmp_path: Path) -> None:
    other = trained.parent / 'other'
    assert run_py(trained.parent, '--config', DIGITS, '--name', 'other', 'trainer_params.max_epochs=2') == 0
    assert run_pl(trained.parent, '--plot', str(trained), str(other), '--out', str(tmp_path / 'both.png')) == 0
    import matplotlib.image
    image = matplotlib.image.imread(tmp_path / 'both.png')
    assert image.shape[0] > 200 and image.shape[1] > 3 * image.shape[0]   # one panel per metric: loss, acc, top3


def sweep_command(save_root: Path) -> list[str]:
    return [sys.executable, 'train.py', '--config', DIGITS, '--name', 'grid', '--save-root', str(save_root),
            '--sweep', 'train_wrapper.args.optim_spec.args.lr=1e-3,3e-3', '--seeds', '0,1',
            'trainer_params.max_epochs=2', 'trainer_params.enable_model_summary=false', *QUIET]


def test_an_interrupted_sweep_continues_and_summarises_mean_and_std(tmp_path: Path) -> None:
    names = [f'grid-lr={lr}-seed={s}' for lr in ('1e-3', '3e-3') for s in (0, 1)]
    first = subprocess.Popen(sweep_command(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / names[0] / 'result.yaml').exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)   # the sweep and the run it had started
    first.wait()
    done_log = (tmp_path / names[0] / 'log.txt').read_text()
    assert not (tmp_path / names[-1] / 'result.yaml').exists()
    again = subprocess.run(sweep_command(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / names[0] / 'log.txt').read_text() == done_log   # finished runs are not run again
    best = {n: yaml.safe_load((tmp_path / n / 'result.yaml').read_text())['best']['value'] for n in names}
    with open(tmp_path / 'grid-sweep' / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['lr'] for r in rows] == ['1e-3', '3e-3']
    for row, pair in zip(rows, (names[:2], names[2:])):
        values = [best[n] for n in pair]
        assert float(row['val/acc mean']) == pytest.approx(statistics.fmean(values))
        assert float(row['val/acc std']) == pytest.approx(statistics.stdev(values))
    markdown = (tmp_path / 'grid-sweep' / 'summary.md').read_text()
    assert markdown.startswith('| lr | val/acc (mean ± std) | runs |') and '| 2/2 |' in markdown
    assert yaml.safe_load((tmp_path / 'grid-sweep' / 'sweep.yaml').read_text())['experiments'] == names


@pytest.mark.slow   # three processes
@pytest.mark.parametrize('script', ['train.py', 'train_pl.py'])
def test_the_lines_of_runs_going_at_once_carry_their_names(script: str, tmp_path: Path) -> None:
    """With --workers 2 each line a run prints starts with `[its name] `, on stdout or stderr as the
    run wrote it (issue 28: two runs' epoch lines interleaved, nameless)."""
    done = subprocess.run([sys.executable, script, '--config', DIGITS, '--name', 'w', '--save-root', str(tmp_path),
                           '--sweep', 'train_wrapper.args.optim_spec.args.lr=1e-3,3e-3', '--workers', '2',
                           'trainer_params.max_epochs=2', *QUIET], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = ['w-lr=1e-3', 'w-lr=3e-3']
    runs = [line for line in done.stdout.splitlines() if line.startswith('[')]
    for name in names:
        mine = [line[len(name) + 3:] for line in runs if line.startswith(f'[{name}] ')]
        assert [line for line in mine if line.startswith('epoch ')] == [
            line for line in (tmp_path / name / 'log.txt').read_text().splitlines() if line.startswith('epoch ')]
    assert all(line.startswith(tuple(f'[{n}] ' for n in names)) for line in runs)
    assert all(line.startswith(tuple(f'[{n}] ' for n in names)) for line in done.stderr.splitlines()), done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith('sweep: ')] == [f'sweep: {n}' for n in names]


def test_lines_said_by_threads_at_once_stay_whole() -> None:
    """A sweep's or search's workers are threads: print() writes a line and its newline apart, and two
    workers printed `sweep: w-lr=1e-3sweep: w-lr=3e-3`. say() writes a whole line at a time."""
    import threading

    from lightyaml.launch.console import say

    class Slow:   # a console slow enough that threads take turns inside a write
        def __init__(self) -> None:
            self.text = ''

        def write(self, text: str) -> None:
            for char in text:
                time.sleep(0.0001)
                self.text += char

        def flush(self) -> None:
            pass
    console = Slow()
    threads = [threading.Thread(target=lambda n=n: [say(f'sweep: run-{n} {i}', console) for i in range(20)])
               for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(console.text.splitlines()) == sorted(f'sweep: run-{n} {i}' for n in range(3) for i in range(20))


def test_a_sweep_with_gpus_runs_one_experiment_per_gpu_at_a_time(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import lightyaml.launch.sweep
    running, most, seen, lock = 0, 0, [], threading.Lock()

    def fake_run(command: list[str], env: dict, label: str) -> int:
        assert env['LIGHTYAML_GROUP'] == 'g'   # the sweep's name: its runs' group in the trackers
        assert label == command[command.index('--name') + 1]   # two at once: their lines say whose they are
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)   # long enough for the other GPU's run to start meanwhile
        exp = Path(command[command.index('--save-root') + 1]) / command[command.index('--name') + 1]
        exp.mkdir(parents=True)
        (exp / 'result.yaml').write_text('final: {val/acc: 0.5}\nbest: {monitor: val/acc, value: 0.5}\n')
        with lock:
            running -= 1
            seen.append(command[command.index('--gpu') + 1])
        return 0
    monkeypatch.setattr(lightyaml.launch.sweep, 'run_process', fake_run)
    args = ['--config', DIGITS, '--name', 'g', '--save-root', str(tmp_path), '--gpu', '0,1',
            '--sweep', 'train_wrapper.args.optim_spec.args.lr=1e-3,3e-3', '--seeds', '0,1']
    assert run_py(tmp_path, *args) == 0
    assert most == 2 and sorted(seen) == ['0', '0', '1', '1']
    assert '| 1e-3 | 0.5000 ± 0.0000 | 2/2 |' in (tmp_path / 'g-sweep' / 'summary.md').read_text()
