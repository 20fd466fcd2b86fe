"""A full disk or quota, told apart from other write errors and described in one line: the file
system, where it is mounted and the space left. Lightning-free and torch-free (torch's checkpoint
writer is recognised by its message), so that both entry points name a full disk alike."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from lightyaml.errors import display_path

FULL_DISK = {errno.ENOSPC: 'no space left', errno.EDQUOT: 'the disk quota is exceeded'}
# torch.save writes through its C++ PytorchStreamWriter, which reports a short write (what a full
# disk or quota gives) as `[enforce fail at inline_container.cc:672] . unexpected pos 9920 vs 9814`.
_TORCH_WRITER_FAILURES = ('inline_container.cc', 'PytorchStreamWriter failed writing')
_LITTLE_SPACE = 64 * 2**20   # below this a short write is taken for a full disk, above it for a quota


def is_torch_writer_failure(error: BaseException) -> bool:
    """Whether `error` is torch's checkpoint writer failing a write (a RuntimeError, no errno)."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITER_FAILURES)


def as_full_disk(error: RuntimeError, path: Path) -> OSError:
    """torch's writer failing on `path`, as the OSError of a full disk (ENOSPC), or of a full quota
    (EDQUOT) when the file system still has room."""
    code = errno.ENOSPC if free_bytes(path) < _LITTLE_SPACE else errno.EDQUOT
    return OSError(code, os.strerror(code), os.fspath(path))


def free_bytes(path: Path) -> int:
    """The bytes an unprivileged user may still write on the file system holding `path`."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def file_system(path: Path) -> str:
    """`/dev/sda1 mounted on /tmp, 0.0 MB free`: the file system holding `path`."""
    where = os.path.realpath(_existing(path))
    device, mount = '?', '/'
    try:
        with open('/proc/self/mounts') as mounts:   # Linux; elsewhere only the space is known
            for line in mounts:
                fields = line.split()
                point = fields[1].replace('\\040', ' ')
                if (where == point or where.startswith(point.rstrip('/') + '/')) and len(point) >= len(mount):
                    device, mount = fields[0], point
    except OSError:
        return f'{free_bytes(path) / 1e6:.1f} MB free'
    return f'{device} mounted on {mount}, {free_bytes(path) / 1e6:.1f} MB free'


def full_disk_cause(error: OSError, folder: Path) -> Optional[str]:
    """For ENOSPC or EDQUOT: `no space left on the file system of save/x (/dev/sda1 mounted on
    /tmp, 0.0 MB free) while writing save/x/ckpt/last.ckpt`; None for any other error."""
    if error.errno not in FULL_DISK:
        return None
    written = Path(os.fsdecode(error.filename)) if error.filename else None
    target = written.parent if written is not None else folder
    cause = f'{FULL_DISK[error.errno]} on the file system of {display_path(folder)} ({file_system(target)})'
    return cause + (f' while writing {display_path(written.with_suffix("") if written.suffix == ".tmp" else written)}'
                    if written is not None else '')


def _existing(path: Path) -> Path:
    """`path` or its closest existing parent (statvfs needs something that exists)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
