"""Helpers and constants shared by the test files (which never import each other): run an entry point
in-process on the real configs, shrunk for speed; compare folders; evaluate a model."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    import torch

# The same examples on every run, so CI is never red by chance; search widely with
# `python -m pytest tests --hypothesis-profile=explore`.
settings.register_profile('default', max_examples=300, derandomize=True, database=None)
settings.register_profile('explore', max_examples=20000)
settings.load_profile('default')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUIET = ['trainer_params.enable_progress_bar=false']
DIGITS = str(ROOT / 'configs' / 'digits.yaml')   # the default config, by absolute path
# A base-wrapper epoch line of log.txt: groups 1, 2, 3 are the epoch, the epoch count and val/acc.
EPOCH_LINE = re.compile(r'^epoch (\d+)/(\d+)  train: loss \d+\.\d{4}  val: acc (\d\.\d{4}) loss \d+\.\d{4} '
                        r'top3 \d\.\d{4}  \d+\.\ds, \w+ / ~\w+$')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: starts several processes (DDP); still runs in CI')


@pytest.fixture
def save_root(tmp_path: Path) -> Path:
    """An empty save root for the experiment folders of one test."""
    return tmp_path / 'save'


@contextlib.contextmanager
def registering(*entries: tuple[Any, str, type]) -> Iterator[None]:
    """(registry, name, class) entries registered while the block runs, as a user's file would
    register them, and unregistered after it."""
    for registry, name, cls in entries:
        registry.register(name)(cls)
    try:
        yield
    finally:
        for registry, name, _ in entries:
            registry._classes.pop(name, None)


def imported(path: Path, source: str) -> ModuleType:
    """`source` written to `path` and imported from there, as a registry imports a user's file
    (code from elsewhere is kept as text in the tests, so its imports are its own)."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_pl(save_root: Path, *args: str) -> int:
    """`python train_pl.py ARGS --save-root SAVE_ROOT`, in-process; returns the exit status."""
    import train_pl
    with own_threads():
        return train_pl.main([*args, '--save-root', str(save_root), *QUIET])


def run_py(save_root: Path, *args: str) -> int:
    """`python train.py ARGS --save-root SAVE_ROOT`, in-process; returns the exit status."""
    import train
    with own_threads():
        return train.main([*args, '--save-root', str(save_root), *QUIET])


@contextlib.contextmanager
def own_threads() -> Iterator[None]:
    """The test process's thread count and OMP_NUM_THREADS back after an in-process run (a run
    fixes its own: lightyaml/run/threads.py), so one test's run does not set the next one's."""
    import torch
    threads, omp = torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS')
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop('OMP_NUM_THREADS', None)
        else:
            os.environ['OMP_NUM_THREADS'] = omp


# Both entry points by script name, for tests parametrized over them.
RUNNERS = {'train.py': run_py, 'train_pl.py': run_pl}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def evaluate(wrapper: torch.nn.Module, split: str = 'val') -> float:
    """Accuracy of a wrapper's model on a digits split, computed here without Lightning."""
    import torch

    from utils import DATASETS
    data = DATASETS.make({'name': 'digits', 'args': {'split': split}})
    wrapper.eval()
    with torch.no_grad():
        pred = wrapper.model(data.tensors).argmax(1)
    return (pred == data.tensors['label']).float().mean().item()


@contextlib.contextmanager
def server_that_hangs_up() -> Iterator[int]:
    """A port on 127.0.0.1 that takes connections and closes each at once, as a tracker server that
    is up but failing: a run's start-up check finds it there, and every request it makes fails."""
    import socket
    import threading
    listener = socket.create_server(('127.0.0.1', 0))

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:   # closed: the block ended
                return
            connection.close()
    threading.Thread(target=hang_up, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
