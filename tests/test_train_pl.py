"""train_pl.py end to end on real data: accuracy, the experiment folder, refusals, resume."""
from __future__ import annotations

import csv
import re
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, EPOCH_LINE, ROOT, evaluate, run_pl, snapshot
from lightyaml.config.loading import load_config


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The README's quickstart, exactly: the default config, trained once for this module."""
    save_root = tmp_path_factory.mktemp('save')
    import train_pl
    from lightyaml.launch.cli import parse_command_line
    from lightyaml.launch.resolve import resolve_run
    run = resolve_run(parse_command_line('train_pl.py', '', ['--config', DIGITS, '--save-root', str(save_root)]))
    run.command = ('python', 'train_pl.py', '--config', DIGITS)   # as typed, without the test's --save-root
    metrics = train_pl.train(run)
    return run.exp.path, metrics


def test_default_config_reaches_97_percent_on_digits(digits_run: tuple[Path, dict]) -> None:
    _, metrics = digits_run
    assert metrics['val/acc'] >= 0.97
    assert metrics['val/top3'] >= 0.99
    assert metrics['train/loss'] < 0.05


def test_experiment_folder_holds_everything_to_understand_and_rerun(digits_run: tuple[Path, dict]) -> None:
    exp, metrics = digits_run
    assert exp.name == 'digits'
    # config.yaml: the merged config (loadable as a config again), headed by the command.
    text = (exp / 'config.yaml').read_text()
    assert re.match(r'# \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: python train_pl.py --config \S+digits.yaml\n', text)
    threads = torch.get_num_threads()   # decided before training and recorded (lightyaml/run/threads.py)
    assert dict(load_config(exp / 'config.yaml')) == {**load_config(DIGITS), 'seed': 0, 'threads': threads}
    # src/: the code and configs, not data, runs or git.
    assert (exp / 'src' / 'train_pl.py').read_text() == (ROOT / 'train_pl.py').read_text()
    assert (exp / 'src' / 'models' / 'mlp.py').exists() and (exp / 'src' / 'configs' / 'digits.yaml').exists()
    assert not any(part in ('save', 'load', '.git') for p in (exp / 'src').rglob('*') for part in p.parts[-3:])
    # git.txt: the commit, when the project is a git checkout with one.
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert (exp / 'git.txt').read_text().startswith(f'commit {head.stdout.strip()}')
        assert (exp / 'git.diff').exists()
    # log.txt: the command, the parameter count, then one line per epoch ending at the final accuracy.
    lines = (exp / 'log.txt').read_text().splitlines()
    assert lines[0].startswith('command: python train_pl.py')
    assert lines[1] == 'parameters: 38,410 total (model 38,410)'
    assert lines[-1].startswith('done: best val/acc ')
    epochs = [EPOCH_LINE.match(line) for line in lines[2:-1]]
    assert all(epochs), lines[2:-1]
    assert [int(m[1]) for m in epochs] == list(range(1, 31)) and {m[2] for m in epochs} == {'30'}
    assert float(epochs[-1][3]) == pytest.approx(metrics['val/acc'], abs=1e-4)
    # metrics.csv: one column per logged value, epoch-level rows for every epoch.
    with open(exp / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ['epoch', 'step']
    assert {'train/loss', 'train/loss_step', 'val/loss', 'val/acc', 'val/top3'} <= set(rows[0])
    val_rows = [r for r in rows if r['val/acc']]
    assert [int(r['epoch']) for r in val_rows] == list(range(30))
    assert float(val_rows[-1]['val/acc']) == pytest.approx(metrics['val/acc'])
    # TensorBoard events and checkpoints.
    assert any(p.stat().st_size > 0 for p in (exp / 'tb').glob('events.out.tfevents.*'))
    ckpts = sorted(p.name for p in (exp / 'ckpt').iterdir())
    assert 'last.ckpt' in ckpts and len(ckpts) == 2


def test_best_checkpoint_alone_rebuilds_the_wrapper(digits_run: tuple[Path, dict]) -> None:
    from models.wrappers.base import BaseWrapper
    exp, _ = digits_run
    best = next(p for p in (exp / 'ckpt').iterdir() if p.name != 'last.ckpt')
    state = torch.load(best, map_location='cpu', weights_only=True)
    wrapper = BaseWrapper.load_from_checkpoint(best, map_location='cpu', weights_only=True)
    key = next(k for k in state['callbacks'] if k.startswith('ModelCheckpoint'))
    score = state['callbacks'][key]['best_model_score']
    assert evaluate(wrapper) == pytest.approx(float(score), abs=1e-6)
    assert list(wrapper.state_dict()) == list(state['state_dict'])


def test_an_existing_experiment_is_refused_and_left_intact(digits_run: tuple[Path, dict],
                                                           capsys: pytest.CaptureFixture) -> None:
    exp, _ = digits_run
    before = snapshot(exp)
    assert run_pl(exp.parent, '--config', DIGITS) == 2
    assert capsys.readouterr().err == (
        f'error: --name: experiment folder {exp} already exists; continue it with --resume {exp}, choose '
        f'another --name or --tag, or pass --overwrite to move the old folder aside (nothing is deleted)\n')
    assert snapshot(exp) == before


def test_overwrite_moves_the_old_run_aside(save_root: Path) -> None:
    args = ['--config', DIGITS, '--name', 'again', 'trainer_params.max_epochs=1']
    assert run_pl(save_root, *args) == 0
    first = snapshot(save_root / 'again')
    assert run_pl(save_root, *args, '--overwrite') == 0
    moved = [p for p in save_root.iterdir() if p.name.startswith('again.old-')]
    assert len(moved) == 1 and snapshot(moved[0]) == first
    assert (save_root / 'again' / 'ckpt' / 'last.ckpt').exists()


def test_resume_continues_in_place_with_overrides_on_top(save_root: Path) -> None:
    assert run_pl(save_root, '--config', DIGITS, '--name', 'long', 'trainer_params.max_epochs=2') == 0
    exp = save_root / 'long'
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=4') == 0
    # Lightning warns of a non-empty checkpoint folder; continuing in place, that is what it should hold.
    assert not [w for w in seen if 'exists and is not empty' in str(w.message)]
    log = (exp / 'log.txt').read_text().splitlines()
    assert [line.split()[1] for line in log if line.startswith('epoch ')] == ['1/2', '2/2', '3/4', '4/4']
    assert any(line.startswith(f'resumed: python train_pl.py --resume {exp}') for line in log)
    with open(exp / 'metrics.csv') as f:
        assert [int(r['epoch']) for r in csv.DictReader(f) if r['val/acc']] == [0, 1, 2, 3]
    header = [line for line in (exp / 'config.yaml').read_text().splitlines() if line.startswith('#')]
    assert len(header) == 2 and 'trainer_params.max_epochs=4' in header[1]
    assert load_config(exp / 'config.yaml')['trainer_params']['max_epochs'] == 4


def test_resume_without_a_checkpoint_starts_again_in_place(save_root: Path) -> None:
    exp = save_root / 'empty'   # killed before its first checkpoint
    (exp / 'ckpt').mkdir(parents=True)
    (exp / 'config.yaml').write_text((ROOT / 'configs' / 'digits.yaml').read_text())
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=1') == 0
    log = (exp / 'log.txt').read_text()
    assert 'restarted from the start (no checkpoint was written): python train_pl.py --resume' in log
    assert (exp / 'result.yaml').is_file() and (exp / 'ckpt' / 'last.ckpt').is_file()
