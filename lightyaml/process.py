"""The process a run lives in: thread defaults, garbage collection around start-up and exit,
glibc's memory policy, the global rank as launchers set it, srun's tasks as torchrun's, and the
process group joined and left so that it ends before Python's own exit.

Lowest layer, torch-free: the entry points call `set_thread_defaults` before anything imports torch,
and `set_cache_defaults` before anything imports matplotlib.
"""
from __future__ import annotations

import atexit
import ctypes
import gc
import os
import re
import stat
import sys
import tempfile
from collections.abc import MutableMapping
from typing import Any, Optional


def machine_cores() -> int:
    """The cores this process may run on (its affinity: a SLURM job's or a container's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def set_thread_defaults(environ: MutableMapping[str, str] = os.environ,
                        cpu_count: Optional[int] = None) -> dict[str, str]:
    """Thread settings torch reads once, at import: the entry points call this first. What the
    user set is kept; OpenMP's wait policy too (PASSIVE made a small MLP 4-5x slower alone).
    Several processes on one machine (LOCAL_WORLD_SIZE: torchrun, train.py's launcher) split its
    cores, OMP_NUM_THREADS = cores // processes, unless OMP_NUM_THREADS or MKL_NUM_THREADS is set
    (torchrun sets 1 unless you do). Lightning's DDP launcher makes the same split. The run's count
    is then fixed and recorded by lightyaml/run/threads.py. Returns what was set."""
    chosen = {}
    user_threads = any(environ.get(var) for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'))
    processes = environ.get('LOCAL_WORLD_SIZE', '')
    if processes.isdigit() and int(processes) > 1 and not user_threads:
        chosen['OMP_NUM_THREADS'] = str(max(1, (cpu_count or machine_cores()) // int(processes)))
    environ.update(chosen)
    return chosen


def set_cache_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Where HOME is unset or not writable (another user's account, a container's arbitrary uid),
    matplotlib warns on stderr and rebuilds its font cache in a new temporary folder at every run:
    give it one private folder of this user's in the temp dir instead. What the user set is kept;
    nothing is set if that folder is not ours alone. Returns what was set."""
    if environ.get('MPLCONFIGDIR'):
        return {}
    home = environ['HOME'] if 'HOME' in environ else os.path.expanduser('~')   # as matplotlib finds it
    home = home if os.path.isabs(home) else '/nonexistent'   # '~': a uid with no account
    if all(_writable(environ.get(xdg) or os.path.join(home, default))
           for xdg, default in (('XDG_CONFIG_HOME', '.config'), ('XDG_CACHE_HOME', '.cache'))):
        return {}
    private = os.path.join(tempfile.gettempdir(), f'lightyaml-{os.getuid()}')
    folder = os.path.join(private, 'matplotlib')
    try:
        os.makedirs(private, mode=0o700, exist_ok=True)
        mine = os.lstat(private)   # not a link, nor a folder someone else made for us
        if not stat.S_ISDIR(mine.st_mode) or mine.st_uid != os.getuid() or mine.st_mode & 0o077:
            return {}
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return {}
    environ['MPLCONFIGDIR'] = folder
    return {'MPLCONFIGDIR': folder}


def _writable(folder: str) -> bool:
    """Whether `folder` is, or can be made, a writable folder (by its first existing parent)."""
    folder = os.path.abspath(folder)
    while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def pause_gc_for_start_up() -> None:
    """Start-up (torch, Lightning and their imports, then the run's objects) makes about 450,000
    objects that live as long as the process, and Python's cyclic garbage collector walks them all
    again at every full collection: a third of Lightning's import time on a 2-core machine. The
    entry points, run as scripts, pause it until training starts (`resume_gc`). Reference counting
    still frees everything that is not in a reference cycle at once."""
    gc.disable()


def resume_gc() -> None:
    """When training starts: what start-up made goes to the collector's permanent generation
    (`gc.freeze`; it lives as long as the run anyway) and collection resumes for what comes next,
    so later collections are quick too. Nothing happens unless collection was paused."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def skip_collections_at_exit(status: Optional[int] = None) -> None:
    """At exit Python collects garbage over every object again while it tears the modules down:
    after importing Lightning that was longer than the whole run's last epoch. Frozen objects are
    left to the operating system (files are still closed and flushed: reference counting frees
    them). A process group still joined (Lightning leaves it to exit) is left first. If gloo's
    threads outlive it all the same (torch holds a group that fully_shard used), Python's own
    teardown is skipped: the exit functions run, the consoles are flushed, and the process ends
    with `status` (see `leave_process_group`). Call it just before a script's `sys.exit(status)`."""
    leave_process_group()
    gc.freeze()
    if status is not None and _gloo_threads_left():
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(status)


def _gloo_threads_left() -> bool:
    """Whether a gloo thread is still running in this process (Linux names them; elsewhere: no)."""
    try:
        tasks = os.listdir('/proc/self/task')
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f'/proc/self/task/{task}/comm') as f:
                if f.read().startswith(('pt_gloo', 'gloo_')):
                    return True
        except OSError:
            pass   # the thread has ended
    return False


def join_process_group(backend: str, **kwargs: Any) -> None:
    """`torch.distributed.init_process_group`, such that `leave_process_group` can free the group.
    torch._dynamo comes first: imported once a group exists (DDP and fully_shard import it when
    they first wrap a model), it keeps references to that group for good."""
    import torch._dynamo  # before the group (see above); DDP and fully_shard import it anyway
    import torch.distributed  # a run with a process group only
    torch.distributed.init_process_group(backend, **kwargs)


def leave_process_group() -> None:
    """Destroy torch.distributed's groups, if any, while Python can still run their threads. gloo's
    worker threads free each collective's tensors after it completes, which takes the GIL; one still
    at it when Python's exit has begun aborts the whole process ('terminate called without an active
    exception', exit 134). A group freed joins its threads first: it is freed here, or as soon as what
    else holds it goes (the DDP wrapper, with the frames that hold it), provided torch._dynamo did
    not take hold of it (`join_process_group`)."""
    dist = sys.modules.get('torch.distributed')
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def global_rank_from_env() -> int:
    """This process's global rank as the launchers (torchrun, SLURM, Lightning's DDP) set it."""
    for var in ('RANK', 'SLURM_PROCID'):
        several_tasks = var != 'SLURM_PROCID' or int(os.environ.get('SLURM_NTASKS', '1')) > 1
        if os.environ.get(var, '').isdigit() and several_tasks:
            return int(os.environ[var])
    return int(os.environ.get('NODE_RANK', '0') or 0) + int(os.environ.get('LOCAL_RANK', '0') or 0)


def srun_as_torchrun(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Under `srun` with several tasks, torchrun's variables from SLURM's, read as Lightning's
    SLURMEnvironment reads them, so that train.py's tasks join one process group: RANK from
    SLURM_PROCID, WORLD_SIZE from SLURM_NTASKS, LOCAL_RANK from SLURM_LOCALID, NODE_RANK from
    SLURM_NODEID, MASTER_ADDR the first host of SLURM_NODELIST, MASTER_PORT 15000 + the job id's
    last 4 digits (both kept if set). Nothing is set under torchrun (RANK set), in a job's batch
    script (no SLURM_STEP_ID: srun did not start it), with one task, or for the job names `bash`
    and `interactive` (Lightning's way out). Call it before `set_thread_defaults`. Returns what was set."""
    if ('RANK' in environ or 'SLURM_STEP_ID' not in environ or int(environ.get('SLURM_NTASKS') or 1) < 2
            or environ.get('SLURM_JOB_NAME') in ('bash', 'interactive')):
        return {}
    first_host = re.sub(r'\[(\d+).*?\]', r'\1', environ.get('SLURM_NODELIST', '127.0.0.1')).split(',')[0]
    chosen = {'RANK': environ['SLURM_PROCID'], 'WORLD_SIZE': environ['SLURM_NTASKS'],
              'LOCAL_RANK': environ.get('SLURM_LOCALID', '0'), 'NODE_RANK': environ.get('SLURM_NODEID', '0'),
              'LOCAL_WORLD_SIZE': str(_tasks_on_this_node(environ)),
              'MASTER_ADDR': environ.get('MASTER_ADDR') or first_host,
              'MASTER_PORT': environ.get('MASTER_PORT') or str(15000 + int(environ.get('SLURM_JOB_ID', '0')[-4:]))}
    environ.update(chosen)
    return chosen


def _tasks_on_this_node(environ: MutableMapping[str, str]) -> int:
    """This node's tasks from SLURM_STEP_TASKS_PER_NODE ('2(x3),1': 2 on each of 3 nodes, then 1)."""
    counts: list[int] = []
    for part in (environ.get('SLURM_STEP_TASKS_PER_NODE') or environ.get('SLURM_NTASKS_PER_NODE') or '1').split(','):
        match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
        if match:
            counts += [int(match[1])] * int(match[2] or 1)
    return counts[min(int(environ.get('SLURM_NODEID') or 0), len(counts) - 1)] if counts else 1


def keep_freed_memory() -> bool:
    """Have glibc keep the memory a training step frees, for the next step. By default it hands
    blocks over 128 KB back to the system as soon as they are freed, so a conv net's activations
    come back as fresh pages at every step: 6,000 page faults and a quarter of a 30 ms step on a
    CPU. After this, blocks up to 32 MB come from the heap and up to 1 GB of free heap is kept
    (the process stays at its peak memory). True if it took effect (Linux with glibc)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:   # not Linux, or not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
