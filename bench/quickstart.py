"""The quickstart from command to exit, and its parts (`python bench/run.py --only quickstart`).

Two kinds of run, alternating, each a fresh process with output to a pipe (as under a job system):
  the command   `python train_pl.py --config configs/digits.yaml` itself, as a user types it
                (with --save-root in a temporary folder): wall time from starting the process to
                its exit, and from its last epoch line to its exit (which includes drawing
                curves.png: the folder is final at exit). Also `--list` and, where the entry
                point has the flag, `--print-config`.
  instrumented  the same run inside `python bench/run.py --child quickstart`, which first imports
                what the run imports (torch, Lightning, the template's modules) and then runs
                train_pl.py through runpy with a hook after every optimizer step: imports, start-up
                to the first step, training (first step to the last epoch line), last line to exit.
Each line the process prints is timestamped as it arrives (PYTHONUNBUFFERED=1).
Then `--runs` on a save root of 200 experiment folders, copies (hard links) of the runs just made.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
CONFIG = 'configs/digits.yaml'
RUNS = '--runs (200 experiments)'
# The targets: part, bound in seconds.
TARGETS = {'command to exit': 6.0, 'start-up to first step': 3.5, 'last epoch line to exit': 0.3,
           '--list': 1.5, '--print-config': 1.5, RUNS: 1.0}
PARTS = ('imports', 'start-up to first step', 'training', 'last epoch line to exit')


def timed_run(command: list[str], env: Optional[dict] = None) -> dict:
    """Run `command` in ROOT; the wall times of its start, of each stdout line and of its exit."""
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    with tempfile.TemporaryFile() as err:
        start = time.time()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        lines = [(time.time(), line) for line in process.stdout]
        process.wait()
        end = time.time()
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f'{" ".join(command)} failed (exit {process.returncode}):\n'
                               f'{err.read().decode()[-3000:]}')
    return {'start': start, 'end': end, 'lines': lines}


def last_epoch_line(run: dict) -> float:
    """When the run printed its last `epoch N/M` line."""
    return [t for t, line in run['lines'] if line.startswith('epoch ')][-1]


def the_command(save_root: Path, name: str, overrides: list[str]) -> dict:
    """The quickstart command as typed: total, and last epoch line to exit (curves.png drawn before it)."""
    run = timed_run([sys.executable, 'train_pl.py', '--config', CONFIG, '--save-root', str(save_root),
                     '--name', name, *overrides])
    if not (save_root / name / 'curves.png').is_file():
        raise RuntimeError(f'{save_root / name}: no curves.png at exit')
    return {'command to exit': run['end'] - run['start'], 'last epoch line to exit': run['end'] - last_epoch_line(run)}


def instrumented(save_root: Path, name: str, overrides: list[str], work: Path) -> dict:
    """The parts, from a run of `bench/run.py --child quickstart`."""
    out = work / f'{name}.json'
    run = timed_run([sys.executable, str(Path(__file__).with_name('run.py')), '--child', 'quickstart',
                     '--spec', json.dumps(overrides), '--config', CONFIG, '--workdir', str(save_root), '--tag', name,
                     '--out', str(out)])
    record = json.loads(out.read_text())
    first_step = record['first_step_wall']
    return {'imports': record['imports_done_wall'] - run['start'],
            'start-up to first step': first_step - run['start'],
            'training': last_epoch_line(run) - first_step,
            'last epoch line to exit': run['end'] - last_epoch_line(run)}


def has_flag(flag: str) -> bool:
    """Whether train_pl.py has `flag` (--print-config comes with another change)."""
    done = subprocess.run([sys.executable, 'train_pl.py', '--help'], cwd=ROOT, capture_output=True, text=True)
    return flag in done.stdout


def copies_of_runs(save_root: Path, out: Path, count: int = 200) -> Path:
    """A save root of `count` experiment folders, hard-linked copies of those in `save_root` in turn
    (--runs reads only their files, so a link is as good as a copy and costs no disk)."""
    sources = sorted(p for p in save_root.iterdir() if (p / 'config.yaml').is_file())
    for i in range(count):
        source = sources[i % len(sources)]
        shutil.copytree(source, out / f'{source.name}-{i:03d}', copy_function=os.link)
    return out


def measure(rounds: int, tiny: bool, log: Callable[[str], None]) -> dict[str, list[float]]:
    """Every figure of the report, once per round."""
    overrides = ['trainer_params.max_epochs=1'] if tiny else []
    quick_commands = {'--list': ['--list']}
    if has_flag('--print-config'):
        quick_commands['--print-config'] = ['--config', CONFIG, '--print-config']
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix='lightyaml-quickstart-') as tmp:
        work = Path(tmp)
        for r in range(rounds):
            real = the_command(work / 'save', f'command-{r}', overrides)
            parts = instrumented(work / 'save', f'instrumented-{r}', overrides, work)
            for key, value in [*parts.items(), *((f'{k} (the command)', v) for k, v in real.items())]:
                figures.setdefault(key, []).append(value)
            for flag, args in quick_commands.items():
                run = timed_run([sys.executable, 'train_pl.py', *args])
                figures.setdefault(flag, []).append(run['end'] - run['start'])
            log(f"round {r + 1}/{rounds} quickstart {real['command to exit']:.2f} s to exit, first step at "
                f"{parts['start-up to first step']:.2f} s, last line to exit {real['last epoch line to exit']:.2f} s")
        many = copies_of_runs(work / 'save', work / 'many')
        for _ in range(rounds):
            run = timed_run([sys.executable, 'train_pl.py', '--runs', '--save-root', str(many)])
            if len(run['lines']) < 201:
                raise RuntimeError(f'--runs listed {len(run["lines"]) - 1} experiments, not 200')
            figures.setdefault(RUNS, []).append(run['end'] - run['start'])
    return figures


def report(figures: dict[str, list[float]], rounds: int, judged: bool = True) -> str:
    """The quickstart's table and its targets (not for a --tiny run, which only checks that it runs)."""
    rows = [*(f'{k} (the command)' for k in ('command to exit', 'last epoch line to exit')), *PARTS, '--list',
            '--print-config', RUNS]
    lines = [f'Quickstart: `python train_pl.py --config {CONFIG}` from command to exit, output to a pipe; '
             f'{rounds} rounds.', '', '| part | median s | min s | max s |', '| --- | ---: | ---: | ---: |']
    for row in rows:
        if row in figures:
            values = figures[row]
            label = row if row.startswith('--') else f'{row} (instrumented)' if row in PARTS else row
            lines.append(f'| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |')
    if not judged:
        return '\n'.join([*lines, '', 'Quickstart targets: not judged (--tiny only checks that every run works)'])
    lines += ['', 'Quickstart targets:']
    for what, bound in TARGETS.items():
        key = what if what.startswith('--') or what == 'start-up to first step' else f'{what} (the command)'
        if key in figures:
            value = statistics.median(figures[key])
            lines.append(f"- {what}: {value:.2f} s (<= {bound}) {'met' if value <= bound else 'NOT met'}")
    return '\n'.join(lines)


def child(args: object, perf0: float, wall0: float) -> None:
    """`--child quickstart`: import what the run imports, then run train_pl.py with a step hook."""
    import runpy

    from utils import pause_gc_for_start_up, set_thread_defaults
    set_thread_defaults()   # as train_pl.py does before torch
    pause_gc_for_start_up()
    import pytorch_lightning  # noqa: F401
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import callbacks.base_logger
    import callbacks.fast_paths
    import callbacks.last_checkpoint
    import callbacks.progress_bar  # noqa: F401
    import train_pl  # noqa: F401
    imports_done = time.perf_counter()
    steps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: steps.append(time.perf_counter()))
    sys.argv = ['train_pl.py', '--config', args.config, '--save-root', args.workdir, '--name', args.tag,
                *json.loads(args.spec)]
    status = 0
    try:
        runpy.run_path(str(ROOT / 'train_pl.py'), run_name='__main__')
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if status == 0 and steps:
        Path(args.out).write_text(json.dumps({'first_step_wall': wall0 + steps[0] - perf0,
                                              'imports_done_wall': wall0 + imports_done - perf0,
                                              'threads': torch.get_num_threads()}))
    sys.exit(status)
