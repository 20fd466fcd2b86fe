"""The experiment folder is final when the command exits, and nothing the run started outlives it:
curves.png is drawn in-process before exit, so a job system that kills every process of the job
at exit (SLURM's cgroup, a container ending) or a script that copies the folder right away gets
the whole run. Both entry points, on the digits config shrunk to two epochs."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DIGITS, QUIET, ROOT, RUNNERS

ENTRIES = ['train.py', 'train_pl.py']
PR_SET_CHILD_SUBREAPER = 36   # from <linux/prctl.h>
EVERY_FILE = ['config.yaml', 'log.txt', 'result.yaml', 'metrics.csv', 'curves.png', 'ckpt/last.ckpt']


def start_in_own_session(entry: str, save_root: Path) -> subprocess.Popen:
    """`python ENTRY --config digits.yaml` for two epochs, as the leader of a new session (as a job
    system starts a job), so every process it starts can be found, and killed, by its session."""
    return subprocess.Popen([sys.executable, entry, '--config', DIGITS, '--save-root', str(save_root), '--name', 'run',
                             'trainer_params.max_epochs=2', *QUIET], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """While the block runs, this process is a child subreaper (Linux): a process the run starts that
    outlives it, even one detached into a session of its own, becomes this process's child."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def survivors(run: subprocess.Popen) -> list[str]:
    """The command lines of the living processes in the run's session (named by its leader's pid) or
    adopted by this process (their parent, the run, is gone), from /proc/<pid>/stat."""
    found = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            state, parent, _, session = stat.read_text().rsplit(')', 1)[1].split()[:4]   # after '(command)'
            if state != 'Z' and (int(session) == run.pid or int(parent) == os.getpid()):
                found.append((stat.parent / 'cmdline').read_bytes().replace(b'\0', b' ').decode())
        except (OSError, ValueError):   # a process that ended while we looked
            continue
    return found


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below `folder` with its size and mtime (in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob('*'))}


def assert_is_png(path: Path) -> None:
    from PIL import Image
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.width > 0 and image.height > 0


@pytest.mark.parametrize('entry', ENTRIES)
def test_at_exit_the_folder_is_whole_and_final_and_nothing_of_the_run_lives_on(entry: str, save_root: Path) -> None:
    with adopting_orphans():
        run = start_in_own_session(entry, save_root)
        _, err = run.communicate(timeout=300)
        left_running = survivors(run)
    try:
        os.killpg(run.pid, signal.SIGKILL)   # as SLURM or a container ending does the moment the job exits
    except ProcessLookupError:   # nothing was left to kill: as it should be
        pass
    assert run.returncode == 0, err[-3000:]
    assert left_running == []
    at_exit = listing(save_root / 'run')
    assert [name for name in EVERY_FILE if name not in at_exit] == []
    assert not [name for name in at_exit if name.endswith('.tmp')]
    assert_is_png(save_root / 'run' / 'curves.png')
    assert 'curves.png not drawn' not in (save_root / 'run' / 'log.txt').read_text()
    time.sleep(3)
    assert listing(save_root / 'run') == at_exit   # sizes and mtimes: nothing was still writing


@pytest.mark.parametrize('entry', ENTRIES)
def test_a_picture_that_cannot_be_drawn_costs_one_line_in_the_log_not_the_run(
        entry: str, save_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightyaml.run.results

    def broken(curves: object) -> bytes:
        raise OSError('no font')
    monkeypatch.setattr(lightyaml.run.results, 'render_curves', broken)
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'run', 'trainer_params.max_epochs=1') == 0
    log = (save_root / 'run' / 'log.txt').read_text().splitlines()
    assert 'curves.png not drawn: OSError: no font' in log
    assert log[-1].startswith('done')   # the run finished as usual after it
    assert (save_root / 'run' / 'result.yaml').is_file() and not (save_root / 'run' / 'curves.png').exists()


def test_plot_overlays_experiments_one_panel_per_metric(tmp_path: Path) -> None:
    from PIL import Image

    from lightyaml.run.results import plot_metrics
    for name, loss in [('a', 1.0), ('b', 2.0)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / 'metrics.csv').write_text(f'epoch,step,train/loss,val/loss,val/acc\n'
                                                     f'0,9,{loss},{loss},0.5\n1,19,{loss / 2},{loss / 2},0.8\n')
    out = plot_metrics([tmp_path / 'a', tmp_path / 'b'], tmp_path / 'ab.png')
    with Image.open(out) as image:
        assert image.format == 'PNG' and image.size == (2 * 450, 340)   # loss and acc, 450 x 340 each
        colours = {colour for _, colour in image.convert('RGB').getcolors(maxcolors=1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours   # a in matplotlib's C0, b in C1
    assert not (tmp_path / 'a' / 'curves.png').exists()   # --out was given
