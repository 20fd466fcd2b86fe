"""Sweeps: one experiment per combination of `--sweep key=v1,v2` values and `--seeds`, then a
summary with mean and std over seeds. Lightning-free; each experiment runs as its own process."""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from callbacks.experiment_dir import atomic_write, check_experiment_name
from callbacks.trackers import GROUP_ENV
from configs.cli import parse_gpu_flag
from configs.loading import dump_yaml, load_config, parse_yaml
from utils import PROJECT_ROOT, ConfigError


def sweep_grid(sweeps: Sequence[str], seeds: Optional[str]) -> list[list[str]]:
    """Every combination of `--sweep key=v1,v2 ...` (values parsed as YAML) and `--seeds`, as
    override lists: [['lr=0.001', 'seed=0'], ...]."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition('=')
        if not sep or not key or not values:
            raise ConfigError(f'--sweep {sweep!r}: expected key.path=v1,v2,... e.g. '
                              f'train_wrapper.args.optim_spec.args.lr=1e-3,3e-4')
        axes.append([f'{key}={v.strip()}' for v in _split_values(values)])
    if seeds:
        if not re.fullmatch(r'\d+(,\d+)*', seeds):
            raise ConfigError(f'--seeds {seeds!r}: expected seeds such as 0,1,2')
        axes.append([f'seed={s}' for s in seeds.split(',')])
    return [list(combo) for combo in itertools.product(*axes)]


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so `hidden=[64,64],[128]` gives two values."""
    parts, depth, current = [], 0, ''
    for char in text:
        depth += (char in '[{') - (char in ']}')
        if char == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += char
    return parts + [current]


def combo_name(base: str, combo: Sequence[str]) -> str:
    """A readable experiment name: digits-lr=0.001-seed=0."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (c.partition('=') for c in combo)]
    return re.sub(r'[^\w.\-=]', '_', '-'.join([base, *parts]))


def run_sweep(script: str, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run one experiment per combination, one after another, or one per GPU at a time with
    `--gpu 0,1`. Finished experiments (result.yaml) are skipped and interrupted ones resumed, so
    running the same command again continues a sweep. Then summary.csv and summary.md."""
    import concurrent.futures
    if not args.config:
        raise ConfigError('--sweep needs --config')
    base = args.name or Path(args.config).stem
    check_experiment_name(base)
    grid = sweep_grid(args.sweep, args.seeds)
    cfg = load_config(args.config, [*args.overrides, *grid[0]])   # fail early on a bad key or value
    sweep_dir = Path(args.save_root) / f'{base}-sweep'
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(sweep_dir / 'sweep.yaml', dump_yaml({'command': ' '.join(['python', script, *argv]),
                                                       'experiments': [combo_name(base, c) for c in grid]}))
    gpus = parse_gpu_flag(args.gpu) if args.gpu else 'cpu'
    slots = gpus if isinstance(gpus, list) else [None]
    free = list(slots)

    def one(combo: list[str]) -> int:
        exp = Path(args.save_root) / combo_name(base, combo)
        if (exp / 'result.yaml').is_file():
            return 0
        slot = free.pop()
        try:
            target = (['--resume', str(exp)] if (exp / 'ckpt' / 'last.ckpt').is_file()
                      else ['--config', args.config, '--name', exp.name] + (['--overwrite'] if exp.exists() else []))
            command = [sys.executable, str(PROJECT_ROOT / script), *target, '--save-root', args.save_root,
                       *(['--gpu', str(slot)] if slot is not None else []), *args.overrides, *combo]
            print(f'sweep: {exp.name}', flush=True)
            # The sweep's name becomes each run's group (W&B) or experiment (MLflow) in the trackers.
            return subprocess.run(command, env={**os.environ, GROUP_ENV: base}).returncode
        finally:
            free.append(slot)
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
        codes = list(pool.map(one, grid))
    summary = summarize_sweep(Path(args.save_root), base, grid, cfg, sweep_dir)
    print(summary)
    return 0 if not any(codes) else 1


def summarize_sweep(save_root: Path, base: str, grid: Sequence[Sequence[str]], cfg: Mapping, out: Path) -> str:
    """summary.csv and summary.md: the monitored metric (best value of each run) per combination,
    mean ± std over seeds. Returns the markdown."""
    import statistics
    monitor = (cfg.get('checkpoint') or {}).get('monitor') or 'val/loss'
    groups: dict[tuple, list[Optional[float]]] = {}
    for combo in grid:
        result_file = save_root / combo_name(base, combo) / 'result.yaml'
        result = parse_yaml(result_file.read_text(), str(result_file)) if result_file.is_file() else None
        value = None if result is None else (result['best']['value'] if result['best']['monitor'] == monitor
                                             else result['final'].get(monitor))
        groups.setdefault(tuple(c for c in combo if not c.startswith('seed=')), []).append(value)
    keys = [c.partition('=')[0].rsplit('.', 1)[-1] for c in next(iter(groups))]
    rows = []
    for combo, values in groups.items():
        done = [v for v in values if v is not None]
        mean = statistics.fmean(done) if done else float('nan')
        std = statistics.stdev(done) if len(done) > 1 else 0.0
        rows.append([c.partition('=')[2] for c in combo] + [len(done), len(values), mean, std] +
                    ['' if v is None else v for v in values])
    with open(out / 'summary.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(keys + ['runs_done', 'runs', f'{monitor} mean', f'{monitor} std'] +
                        [f'run {i}' for i in range(max(len(v) for v in groups.values()))])
        writer.writerows(rows)
    lines = [f"| {' | '.join(keys)} | {monitor} (mean ± std) | runs |", '|' + ' --- |' * (len(keys) + 2)]
    lines += [f"| {' | '.join(str(x) for x in r[:len(keys)])} | {r[len(keys) + 2]:.4f} ± {r[len(keys) + 3]:.4f} | "
              f'{r[len(keys)]}/{r[len(keys) + 1]} |' for r in rows]
    markdown = '\n'.join(lines) + '\n'
    (out / 'summary.md').write_text(markdown)
    return markdown
