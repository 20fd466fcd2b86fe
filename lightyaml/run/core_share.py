"""Training runs on one machine share its CPU cores (Lightning-free: train.py uses it directly,
train_pl.py through the FastPaths callback).

Two runs that each use every core (a CPU sweep, two users, a test suite beside a run) make
OpenMP put 2x the threads on the cores, and every parallel operation waits for its slowest
thread: each run was 1.6x to 6.5x slower than alone on 2 cores. So while it trains on the CPU,
a run is listed under an abstract Unix socket name (Linux; no file is written, and the kernel
drops the name when the process ends, even when it is killed), and every half second it counts
the listed processes and shares out the threads a run has alone: all of them alone, half beside
another run, and all of them again once the other ends. DDP processes on one machine count one
each and start with their share already (Lightning's and train.py's launchers split the cores).

Threads change the order in which a sum is taken, so the thread count is left alone (what torch
chose, or OMP_NUM_THREADS) where results must not depend on what else runs:
`trainer_params.deterministic: true`, OMP_NUM_THREADS or MKL_NUM_THREADS set by the user,
LIGHTYAML_SHARE_CORES=0, or a `torch.set_num_threads` in the user's code (seen, then kept).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Optional

import torch

from lightyaml.process import SHARE_CORES

NAME = b'lightyaml-cpu-run/'
INTERVAL = 0.5                  # seconds between two counts


def listed_runs() -> int:
    """How many processes are training on this machine's CPU now (this one included)."""
    with open('/proc/net/unix', 'rb') as table:
        return table.read().count(b' @' + NAME)


class CoreShare:
    """`start()` when training starts, `step()` every batch, `stop()` when it ends (`enabled`: on
    the CPU)."""

    def __init__(self, enabled: bool = True, processes: int = 1) -> None:
        """`processes`: this run's processes on this machine (DDP), which split its threads."""
        self.enabled = enabled and os.environ.get(SHARE_CORES, '1') != '0'
        self.processes = processes
        self.threads = self.initial = 0
        self.next_count = 0.0
        self._name: Optional[socket.socket] = None

    def start(self) -> None:
        self.enabled = self.enabled and not torch.are_deterministic_algorithms_enabled()
        if not self.enabled:
            return
        try:
            self._name = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._name.bind(b'\0' + NAME + str(os.getpid()).encode())
            listed_runs()
        except (OSError, AttributeError):   # not Linux, or no /proc: each run keeps its threads
            self.stop()
            self.enabled = False
            return
        self.threads = self.initial = torch.get_num_threads()
        self.count()

    def step(self) -> None:
        if self.enabled and time.monotonic() >= self.next_count:
            self.count()

    def count(self) -> None:
        if torch.get_num_threads() != self.threads:   # the user's code set it: theirs from now on
            self.stop()
            self.enabled = False
            return
        # Never more than it started with: a DDP process that counts before its siblings are
        # listed keeps its share.
        wanted = max(1, min(self.initial, self.initial * self.processes // max(1, listed_runs())))
        if wanted != self.threads:
            torch.set_num_threads(wanted)
            self.threads = wanted
        self.next_count = time.monotonic() + INTERVAL

    def stop(self) -> None:
        """Unlisted, and the thread count it started with back (for --test after training)."""
        if self._name is not None:
            self._name.close()
            self._name = None
            if self.enabled and self.threads != self.initial and torch.get_num_threads() == self.threads:
                torch.set_num_threads(self.initial)
