"""--runs: the experiments under a save root (or a sweep's, or a search's) as one table, read back
from their folders (lightyaml/run/run_state.py): state, epochs, best monitored value and its epoch,
training time, start, tag and parent. --diff and --compare are in lightyaml/launch/run_diff.py.

Lightning-free and torch-free: both entry points answer these before importing torch, and
nothing is written into any experiment folder (a folder's lock is read from /proc/locks; it is
probed, taken and dropped at once, only where the files say the last attempt has not ended).
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from lightyaml.config.loading import parse_yaml
from lightyaml.errors import ConfigError, did_you_mean, display_path
from lightyaml.launch.cli import Plan
from lightyaml.launch.recorded import CommandReader
from lightyaml.launch.run_diff import best_text, compare_runs, diff_runs, table
from lightyaml.run.folder_lock import held_locks
from lightyaml.run.metrics_files import format_duration
from lightyaml.run.run_state import STATES, RunState, checkpoint_mode, final_metrics, read_run


@dataclasses.dataclass
class Found:
    """What a folder given to --runs holds: its experiments (with the sweep or search each belongs
    to, by folder), and one line for each folder that is something else."""
    where: Path
    runs: list[RunState]
    groups: dict[Path, str]
    others: list[str]


def report_runs(plan: Plan) -> int:
    """--runs, --diff or --compare; returns the exit status (--diff: 1 when the configs differ)."""
    args = plan.args
    flag = '--diff' if args.diff else '--compare' if args.compare else '--runs'
    if args.overrides:
        raise ConfigError(f'{flag}: takes no overrides ({args.overrides[0]!r}); it reads experiments as they are')
    if args.diff:
        return diff_runs(*args.diff, Path(args.save_root))
    if args.compare:
        return compare_runs(args.compare, args.out, Path(args.save_root))
    print(runs_table(args))
    return 0


def runs_table(args: argparse.Namespace) -> str:
    """The --runs table, then a line for each run that failed and each folder that is not an experiment."""
    found = find_runs(args.runs or None, Path(args.save_root))
    runs = sort_runs(filter_states(found.runs, args.state), args.sort, args.reverse)
    others = [] if args.state else found.others   # asked for runs in some states: only those
    if not runs and not others:
        wanted = ' '.join(f'{flag} {value}' for flag, value in (('--runs', args.runs), ('--state', args.state))
                          if value)
        return f"no experiments in {display_path(found.where)}{f' (for {wanted})' if wanted else ''}"
    commands = CommandReader()
    rows = [['name', 'state', 'epochs', 'best', 'time', 'started', 'tag', 'parent']]
    rows += [run_row(run, commands.parsed(run), found.groups.get(run.path)) for run in runs]
    notes = [f'{run.name}: {run.note}' for run in runs if run.state in ('failed', 'half-written', 'foreign')]
    if any(run.state == 'killed' for run in runs):
        notes.append('killed: ended without a line in log.txt, and no process holds its lock (SIGKILL, out of '
                     'memory, a lost machine); --resume continues it')
    return '\n'.join([*(table(rows) if runs else []), *([''] if runs and (notes or others) else []), *notes, *others])


def find_runs(target: Optional[str], save_root: Path) -> Found:
    """The experiments --runs TARGET names: those under the save root (a name pattern: `lr*`; a
    pattern without wildcards matches the names that contain it), under a folder given (a save
    root, a search's folder), a sweep's runs (its sweep.yaml), or one experiment folder."""
    folder, pattern = save_root, target
    if target and Path(target).is_dir():
        folder, pattern = Path(target), None
    elif target and os.sep in target:   # save/lr*: a pattern in another folder
        folder, pattern = Path(target).parent, Path(target).name
        if not folder.is_dir() or not any(c in pattern for c in '*?['):
            raise ConfigError(f'--runs {target}: no such folder')
    if pattern and not any(c in pattern for c in '*?['):
        pattern = f'*{pattern}*'
    if (folder / 'config.yaml').is_file():   # one experiment
        return Found(folder, [read_run(folder, held_locks())], membership(folder.parent), [])
    if (folder / 'sweep.yaml').is_file():
        paths, others = sweep_runs(folder), []
    else:
        paths, others = experiments_in(folder)
    if pattern:
        paths = [p for p in paths if fnmatch.fnmatchcase(p.name, pattern)]
        others = [line for line in others if fnmatch.fnmatchcase(line.split(':')[0], pattern)]
    locks = held_locks()
    return Found(folder, [read_run(p, locks) for p in paths], membership(folder), others)


def experiments_in(folder: Path) -> tuple[list[Path], list[str]]:
    """The experiment folders in `folder`, and a line for each sweep, search or other folder there."""
    paths, others = [], []
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))
    except OSError as e:
        if not folder.exists():
            return [], []
        raise ConfigError(f'--runs {display_path(folder)}: cannot read it ({e.strerror or e})') from None
    for child in children:
        if (child / 'config.yaml').is_file():
            paths.append(child)
        elif (child / 'sweep.yaml').is_file():
            others.append(f'{child.name}: a sweep of {len(sweep_names(child))} runs (--runs {display_path(child)})')
        elif (child / 'search.yaml').is_file():
            trials = sum((p / 'config.yaml').is_file() for p in child.iterdir() if p.is_dir())
            others.append(f'{child.name}: a search, {trials} trials (--runs {display_path(child)})')
        else:
            others.append(f'{child.name}: not an experiment (no config.yaml)')
    return paths, others


def sweep_names(sweep: Path) -> list[str]:
    """The experiments a sweep's sweep.yaml names (lightyaml/launch/sweep.py), [] if it cannot be read."""
    try:
        data = parse_yaml((sweep / 'sweep.yaml').read_text(), display_path(sweep / 'sweep.yaml'))
    except (ConfigError, OSError):
        return []
    names = data.get('experiments') if isinstance(data, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []


def sweep_runs(sweep: Path) -> list[Path]:
    """A sweep's experiment folders, beside its sweep folder; those not started yet are left out."""
    return [sweep.parent / name for name in sweep_names(sweep) if (sweep.parent / name / 'config.yaml').is_file()]


def membership(folder: Path) -> dict[Path, str]:
    """{experiment folder: 'sweep <its sweep>' or 'search <its search>'} for the experiments in `folder`."""
    groups = {}
    if (folder / 'search.yaml').is_file():
        groups.update({p: f'search {folder.name}' for p in folder.iterdir() if p.is_dir()})
    for sweep in (folder.glob('*/sweep.yaml') if folder.is_dir() else ()):
        groups.update({folder / name: f'sweep {sweep.parent.name}' for name in sweep_names(sweep.parent)})
    if (folder / 'sweep.yaml').is_file():
        groups.update({folder.parent / name: f'sweep {folder.name}' for name in sweep_names(folder)})
    return groups


def filter_states(runs: list[RunState], states: Optional[str]) -> list[RunState]:
    """--state finished,killed: only the runs in those states."""
    if not states:
        return runs
    wanted = [s.strip() for s in states.split(',') if s.strip()]
    for state in wanted:
        if state not in STATES:
            raise ConfigError(f"--state {state}: not a state a run can be in{did_you_mean(state, STATES)}; "
                              f"states: {', '.join(STATES)}")
    return [run for run in runs if run.state in wanted]


SORT_KEYS = ('name', 'state', 'epochs', 'time', 'started')


def sort_runs(runs: list[RunState], key: Optional[str], reverse: bool) -> list[RunState]:
    """Newest first by default; by name, state, epochs, time or started; or by a metric, best first:
    its best value in runs that monitor it, else its last value; highest first unless the runs
    that monitor it do so with mode min, or (monitored by none) its name says loss or error.
    Ties stay newest first; --reverse turns the whole order round (runs without the metric stay last)."""
    newest = sorted(runs, key=lambda r: r.started or '', reverse=True)
    key = key or 'started'
    if key in SORT_KEYS:
        by = {'name': lambda r: r.name, 'state': lambda r: STATES.index(r.state),
              'epochs': lambda r: -r.epochs, 'time': lambda r: -(r.elapsed or 0.0)}
        ordered = sorted(newest, key=by[key]) if key in by else newest
        return ordered[::-1] if reverse else ordered
    values = {id(run): metric_value(run, key) for run in runs}
    if runs and all(v is None for v in values.values()):
        known = sorted({m for run in runs for m in [run.monitor, *final_metrics(run)] if m})
        raise ConfigError(f'--sort {key}: no run here logged it{did_you_mean(key, [*SORT_KEYS, *known])}; '
                          f"sort by {', '.join(SORT_KEYS)} or a metric: {', '.join(known) or 'none logged'}")
    modes = [checkpoint_mode(run) for run in runs if run.monitor == key]
    lowest_first = modes.count('min') > modes.count('max') if modes else any(w in key for w in ('loss', 'err'))
    sign = 1 if lowest_first else -1
    with_value = sorted((r for r in newest if values[id(r)] is not None), key=lambda r: sign * values[id(r)])
    return (with_value[::-1] if reverse else with_value) + [r for r in newest if values[id(r)] is None]


def metric_value(run: RunState, metric: str) -> Optional[float]:
    """A run's value of `metric` for sorting: its best if it monitors it, else its last value."""
    if run.monitor == metric:
        return run.best
    return final_metrics(run).get(metric)


def parent_of(run: RunState, parsed: Sequence[Optional[argparse.Namespace]], group: Optional[str]) -> str:
    """Where a run comes from: the sweep or search it belongs to, the weights it started from
    (--init-from), and how often it was continued (--resume, --auto-resume, a requeue)."""
    parts = [group] if group else []
    first = parsed[0] if parsed else None
    if first is not None and first.init_from:
        parts.append(f'init-from {_shown(first.init_from, run.path.parent)}')
    resumed = len(parsed) - 1
    if resumed > 0:
        parts.append(f'resumed {resumed}x')
    return ', '.join(parts) or '-'


def _shown(target: str, save_root: Path) -> str:
    """An experiment named by its folder name when it lies in `save_root`, else by its path."""
    path = Path(target)
    folder = path.parent.parent if path.suffix == '.ckpt' else path
    try:
        inside = folder.resolve().parent == save_root.resolve()
    except OSError:
        inside = False
    if inside:
        return folder.name if folder == path else f'{folder.name}/{path.parent.name}/{path.name}'
    return target


def run_row(run: RunState, parsed: Sequence[Optional[argparse.Namespace]], group: Optional[str]) -> list[str]:
    """One row of the --runs table."""
    first = parsed[0] if parsed else None
    state = run.state
    if run.state == 'running' or run.state == 'stopped':
        state = f"{run.state} ({run.note.split(' at ')[0].removeprefix('stopped by ')})"
    epochs = f'{run.epochs}/{run.planned}' if run.planned not in (None, -1) else str(run.epochs)
    return [run.name, state, epochs, best_text(run), format_duration(run.elapsed) if run.elapsed is not None else '-',
            run.started.replace('T', ' ')[:16] if run.started else '-',
            (first.tag if first is not None and first.tag else '-'), parent_of(run, parsed, group)]
