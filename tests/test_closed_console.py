"""A run whose console goes away (a pipe into `head` closed, a terminal gone) trains on to the end:
what it prints is dropped from then on and log.txt stays complete (lightyaml/launch/console.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DIGITS, ROOT


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
@pytest.mark.parametrize('closed', ['stdout', 'stderr'])
def test_a_closed_console_never_stops_the_run(tmp_path: Path, entry: str, closed: str) -> None:
    command = [sys.executable, str(ROOT / entry), '--config', DIGITS, '--save-root', str(tmp_path), '--name', 'x',
               'trainer_params.max_epochs=3', 'trainer_params.limit_train_batches=2',
               'trainer_params.limit_val_batches=2', 'train_wrapper.args.model_spec.args.hidden=[16]']
    pipe = {closed: subprocess.PIPE}
    other = 'stderr' if closed == 'stdout' else 'stdout'
    with open(tmp_path / 'other.txt', 'w') as other_file:
        run = subprocess.Popen(command, cwd=tmp_path, **pipe, **{other: other_file})
        stream = getattr(run, closed)
        stream.readline()   # as `| head -1` does: one line, then the reader is gone
        stream.close()
        assert run.wait(timeout=300) == 0, (tmp_path / 'other.txt').read_text()[-2000:]
    exp = tmp_path / 'x'
    log = (exp / 'log.txt').read_text()
    assert [line.split()[1] for line in log.splitlines() if line.startswith('epoch ')][-1:] == ['3/3'], log
    assert yaml.safe_load((exp / 'result.yaml').read_text())['final']['train/loss'] > 0
    assert (exp / 'ckpt' / 'last.ckpt').is_file()
