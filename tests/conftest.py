"""Shared helpers: run an entry point in-process on the real configs, shrunk for speed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

# The same examples on every run, so CI is never red by chance; search widely with
# `python -m pytest tests --hypothesis-profile=explore`.
settings.register_profile('default', max_examples=300, derandomize=True, database=None)
settings.register_profile('explore', max_examples=20000)
settings.load_profile('default')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUIET = ['trainer_params.enable_progress_bar=false']


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: starts several processes (DDP); still runs in CI')


@pytest.fixture
def save_root(tmp_path: Path) -> Path:
    """An empty save root for the experiment folders of one test."""
    return tmp_path / 'save'


def run_pl(save_root: Path, *args: str) -> int:
    """`python train_pl.py ARGS --save-root SAVE_ROOT`, in-process; returns the exit status."""
    import train_pl
    return train_pl.main([*args, '--save-root', str(save_root), *QUIET])
