"""Runs on one machine share its cores while they train on the CPU (lightyaml/run/core_share.py):
each is listed under an abstract Unix socket name, counts the listed runs and takes its share of
the threads it has alone. Another run is a second listed name, here held by a real process or by
the test itself; the thread counts a model sees while it trains are what torch gives its ops. The
speed this buys is measured by `python bench/run.py --only contention`, not here."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import nn

from conftest import DIGITS, RUNNERS, registering
from lightyaml.run import core_share
from lightyaml.run.core_share import NAME, CoreShare, listed_runs
from utils import MODELS, SHARE_CORES

pytestmark = pytest.mark.skipif(not Path('/proc/net/unix').exists(), reason='abstract socket names are Linux')


def listed(tag: bytes) -> socket.socket:
    """Another run, as a run lists itself (held by this process)."""
    name = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name.bind(b'\0' + NAME + tag)
    return name


@pytest.fixture
def four_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Torch at 4 threads (a run's count alone), counting at every step, sharing switched on
    whatever the test process was started with; torch's count and deterministic mode (which
    `trainer_params.deterministic` turns on) restored after."""
    before, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    monkeypatch.setattr(core_share, 'INTERVAL', 0.0)
    monkeypatch.setenv(SHARE_CORES, '1')
    torch.set_num_threads(4)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic)


def test_a_run_takes_its_share_while_others_train_and_all_again_after(four_threads: None) -> None:
    assert listed_runs() == 0
    share = CoreShare()
    share.start()
    assert (listed_runs(), torch.get_num_threads()) == (1, 4)
    other = subprocess.Popen([sys.executable, '-c', f'import socket, time; s = socket.socket(socket.AF_UNIX, '
                              f'socket.SOCK_DGRAM); s.bind(b"\\0{NAME.decode()}other"); print(1, flush=True); '
                              f'time.sleep(60)'], stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline().strip() == b'1'
        share.step()
        assert (listed_runs(), torch.get_num_threads()) == (2, 2)
        third = listed(b'third')
        share.step()
        assert torch.get_num_threads() == 1   # 4 // 3
        third.close()
        share.step()
        assert torch.get_num_threads() == 2
    finally:
        other.send_signal(signal.SIGKILL)   # a killed run is unlisted by the kernel
        other.wait()
    share.step()
    assert (listed_runs(), torch.get_num_threads()) == (1, 4)
    share.stop()
    assert listed_runs() == 0


def test_the_count_is_checked_every_interval_not_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SHARE_CORES, '1')
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    share = CoreShare()
    try:
        share.start()
        with listed(b'other'):
            share.step()   # within half a second of the start: not counted again
            assert torch.get_num_threads() == 4
            share.next_count = time.monotonic()
            share.step()
            assert torch.get_num_threads() == 2
    finally:
        share.stop()
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before


def test_ddp_processes_on_one_machine_each_start_with_their_share(four_threads: None) -> None:
    torch.set_num_threads(2)   # as Lightning's launcher splits 4 cores between 2 processes
    share = CoreShare(processes=2)
    share.start()   # before its sibling is listed: its share, not more
    assert torch.get_num_threads() == 2
    with listed(b'sibling'):
        share.step()
        assert torch.get_num_threads() == 2   # 2 * 2 threads // 2 listed processes
        with listed(b'another-run'):
            share.step()
            assert torch.get_num_threads() == 1
    share.stop()


@pytest.mark.parametrize('why', ['gpu', 'deterministic', 'environment'])
def test_a_run_that_must_not_share_keeps_its_threads_and_is_not_listed(four_threads: None, why: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if why == 'environment':
        monkeypatch.setenv(SHARE_CORES, '0')   # what set_thread_defaults writes when OMP_NUM_THREADS is the user's
    torch.use_deterministic_algorithms(why == 'deterministic')
    share = CoreShare(enabled=why != 'gpu')
    with listed(b'other'):
        share.start()
        share.step()
        assert (listed_runs(), torch.get_num_threads()) == (1, 4)
    share.stop()


def test_a_thread_count_set_by_the_users_code_is_theirs_from_then_on(four_threads: None) -> None:
    share = CoreShare()
    share.start()
    torch.set_num_threads(3)   # in a model's __init__ or a callback
    with listed(b'other'):
        share.step()
        assert (listed_runs(), torch.get_num_threads()) == (1, 3)
    share.stop()
    assert torch.get_num_threads() == 3


# --- both entry points --------------------------------------------------------------------------------

OTHER: dict[str, Optional[socket.socket]] = {'run': None}
SEEN: list[int] = []


class ThreadProbe(nn.Module):
    """A linear model that notes torch's thread count at every training step and ends the other
    run (closes its listed name) at its 10th."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, batch: dict) -> torch.Tensor:
        if self.training:
            SEEN.append(torch.get_num_threads())
            if len(SEEN) == 10 and OTHER['run'] is not None:
                OTHER['run'].close()
        return self.linear(batch['image'].flatten(1))


@pytest.fixture
def thread_probe(four_threads: None) -> Iterator[None]:
    SEEN.clear()
    try:
        with registering((MODELS, 'thread_probe', ThreadProbe)):
            yield
    finally:
        if OTHER['run'] is not None:
            OTHER['run'].close()


@pytest.mark.parametrize('entry', sorted(RUNNERS))
@pytest.mark.parametrize('deterministic', [False, True])
def test_a_training_shares_the_cores_with_another_run_until_it_ends(entry: str, deterministic: bool,
                                                                    save_root: Path, thread_probe: None) -> None:
    OTHER['run'] = listed(b'other')
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'probe',
                          'train_wrapper.args.model_spec.name=thread_probe', 'train_wrapper.args.model_spec.args={}',
                          'trainer_params.max_epochs=1',
                          f'trainer_params.deterministic={str(deterministic).lower()}') == 0
    steps = len(SEEN) - 1   # the first: the preflight's training batch, before training starts
    assert SEEN[0] == 4 and steps == 40   # 1,257 training digits in batches of 32
    if deterministic:   # results must not depend on what else runs: the count never changes
        assert SEEN[1:] == [4] * steps
    else:   # half of the 4 threads beside the other run, all 4 from the step after it ended
        assert SEEN[1:] == [2] * 9 + [4] * (steps - 9)
    assert (listed_runs(), torch.get_num_threads()) == (0, 4)   # unlisted at the end, 4 threads again
    assert 'val/acc' in (save_root / 'probe' / 'log.txt').read_text()
