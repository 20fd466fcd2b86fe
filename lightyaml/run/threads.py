"""A run's CPU thread count: decided once, before training, and recorded (Lightning-free: both
entry points call `decide_threads` before they build anything).

Threads change the order in which a sum is taken, so a run that changed its thread count while it
trained (as the cores were once shared out between the runs on a machine) ended with weights
that depended on what else ran. The count now comes from the config (`threads: N`) or else from
the machine and the user's settings only: the user's OMP_NUM_THREADS (or the split a launcher
set: torchrun, train.py's and Lightning's DDP, a sweep's `--workers`), and otherwise the cores
this process may use divided between the run's processes on this machine. It is written into
the config, so config.yaml records it and `--resume` or a rerun of config.yaml uses it.

Two runs side by side on a machine then each keep their count; for speed, give each a share of
the cores (`threads=1` on two cores; `--workers` does it for a sweep or a search).
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

import torch

from lightyaml.process import machine_cores


def decide_threads(cfg: MutableMapping, local_processes: int = 1) -> int:
    """Set this process's thread count for the whole run and record it as `cfg['threads']`:
    the config's value, else the user's OMP_NUM_THREADS (or a launcher's split), else the cores
    divided between the run's `local_processes` on this machine. OMP_NUM_THREADS is set to it too,
    so the processes a DDP launcher starts (which import torch afresh) and Lightning's own split
    (which applies only where it is unset) agree."""
    threads = cfg.get('threads')
    if threads is None:
        user = os.environ.get('OMP_NUM_THREADS', '')
        threads = (int(user) if user.isdigit() and int(user) > 0
                   else torch.get_num_threads() if local_processes <= 1 else max(1, machine_cores() // local_processes))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ['OMP_NUM_THREADS'] = str(threads)
    cfg['threads'] = threads
    return threads
