"""One writer per experiment folder: an exclusive `flock` on the folder itself.

Lightning-free. The lock is on the folder's own file descriptor, so taking it creates and changes
nothing, and the kernel drops it when the holding process ends, however it ends (a SIGKILL never
leaves a folder stuck). The holder's pid is read from /proc/locks (Linux); elsewhere it is unknown.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

# Set by a launcher that holds a folder's lock for the processes it starts (train.py --gpu 1,2).
HELD_BY_LAUNCHER = 'LIGHTYAML_FOLDER_LOCKED'


class FolderBusy(Exception):
    """Another process holds the folder's lock; `pid` is that process, when it can be known."""

    def __init__(self, pid: Optional[int]) -> None:
        super().__init__(f'pid {pid if pid is not None else "unknown"}')
        self.pid = pid


def lock_folder(path: Path, new: bool = False) -> Optional[int]:
    """Take the folder's exclusive lock without waiting; returns the descriptor that holds it
    (None when the file system has no flock, or when the launcher that started this process holds
    it, unless the folder is `new`). Raises FolderBusy if another process holds it, OSError if the
    folder cannot be opened."""
    if not new and os.environ.get(HELD_BY_LAUNCHER) == str(path.resolve()):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(lock_holder(path)) from None
    except OSError:   # e.g. some network file systems refuse flock on a folder: no lock, as before
        os.close(fd)
        return None
    return fd


def unlock_folder(fd: Optional[int]) -> None:
    """Release a lock `lock_folder` returned (closing the descriptor drops it)."""
    if fd is not None:
        os.close(fd)


def is_locked(path: Path) -> Optional[FolderBusy]:
    """Whether another process holds the folder's lock (probing takes and drops it at once)."""
    try:
        fd = lock_folder(path)
    except FolderBusy as busy:
        return busy
    except OSError:
        return None
    unlock_folder(fd)
    return None


def lock_holder(path: Path) -> Optional[int]:
    """The pid holding a flock on `path`, from /proc/locks (`... FLOCK ADVISORY WRITE PID MAJ:MIN:INODE ...`)."""
    try:
        return (held_locks() or {}).get(lock_key(path))
    except OSError:
        return None


def held_locks() -> Optional[dict[str, int]]:
    """Every flock this machine's kernel holds, {MAJ:MIN:INODE: pid}, read from /proc/locks without
    taking any (so reading it never stands in a run's way); None where there is no /proc/locks."""
    held = {}
    try:
        with open('/proc/locks') as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == 'FLOCK' and fields[4].isdigit():
                    held.setdefault(fields[5], int(fields[4]))
    except OSError:
        return None
    return held


def lock_key(path: Path) -> str:
    """How /proc/locks names the file at `path`: its device (hexadecimal MAJ:MIN) and inode."""
    st = os.stat(path)
    return f'{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}'
