"""Sweeps: one experiment per combination of `--sweep key=v1,v2` values and `--seeds`, then a
summary with mean and std over seeds. Lightning-free; each experiment runs as its own process.

An experiment is identified by its whole config (the file after `extends`, every override and
the swept values), not by its name alone: running a sweep again continues the experiments whose
folders hold that same config and refuses, before anything runs, when a folder of the same name
was run with another one (choose another --name).
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import itertools
import os
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from lightyaml.config.loading import Config, config_differences, dump_yaml, load_config, parse_yaml
from lightyaml.config.secrets import check_no_masked_secrets, mask_command, mask_secrets
from lightyaml.errors import PROJECT_ROOT, ConfigError, display_path
from lightyaml.launch.cli import Plan
from lightyaml.launch.console import run_process, say
from lightyaml.launch.devices import check_gpu_asked, parse_gpu_flag
from lightyaml.process import machine_cores
from lightyaml.run.experiment_dir import atomic_write, check_experiment_name
from lightyaml.run.trackers import GROUP_ENV


def sweep_grid(sweeps: Sequence[str], seeds: Optional[str]) -> list[list[str]]:
    """Every combination of `--sweep key=v1,v2 ...` (values parsed as YAML) and `--seeds`, as
    override lists: [['lr=0.001', 'seed=0'], ...]."""
    axes, keys = [], []
    for sweep in sweeps:
        key, sep, values = sweep.partition('=')
        if not sep or not key or not values:
            raise ConfigError(f'--sweep {sweep!r}: expected key.path=v1,v2,... e.g. '
                              f'train_wrapper.args.optim_spec.args.lr=1e-3,3e-4')
        if key in keys or (key == 'seed' and seeds):
            raise ConfigError(f'--sweep {sweep!r}: {key} is swept twice')
        keys.append(key)
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


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with: `lr`, or `optim_spec.args.lr`
    and `scheduler_spec.args.lr` when both are swept."""
    short = {}
    for key in keys:
        parts = key.split('.')
        for n in range(1, len(parts) + 1):
            suffix = '.'.join(parts[-n:])
            if sum(other == suffix or other.endswith('.' + suffix) for other in keys) == 1:
                break
        short[key] = suffix
    return short


def combo_name(base: str, combo: Sequence[str], short: Optional[Mapping[str, str]] = None) -> str:
    """A readable experiment name: digits-lr=0.001-seed=0 (keys shortened by `short_keys`)."""
    pairs = [c.partition('=') for c in combo]
    short = short or short_keys([k for k, _, _ in pairs])
    return re.sub(r'[^\w.\-=]', '_', '-'.join([base, *(f'{short[k]}={v}' for k, _, v in pairs)]))


def run_value(exp: Path, metric: str) -> Optional[float]:
    """A finished run's value of `metric`: its best value if it is the monitored one, else the
    last epoch's; None while the run has no result.yaml."""
    result_file = exp / 'result.yaml'
    if not result_file.is_file():
        return None
    result = parse_yaml(result_file.read_text(), str(result_file)) or {}
    best = result.get('best') or {}
    value = best.get('value') if best.get('monitor') == metric else (result.get('final') or {}).get(metric)
    return None if value is None else float(value)


def check_same_config(exp: Path, cfg: Mapping) -> Optional[str]:
    """None if the folder is free or was run with `cfg`; else why it cannot be continued."""
    saved = exp / 'config.yaml'
    if not saved.is_file():
        return None if not exp.exists() else f'{display_path(exp)} exists without a config.yaml'
    # config.yaml holds secrets as `***`: compare with the config masked the same way
    differences = config_differences(load_config(saved), mask_secrets(cfg), ignore_decided=True)
    return f'{display_path(exp)} was run with another config ({"; ".join(differences[:3])})' if differences else None


def worker_slots(gpu: Optional[str], workers: Optional[int]) -> list[tuple[list[str], dict[str, str]]]:
    """What each of the runs at once gets: its `--gpu` flag (one device each with --gpu 0,1) and
    environment (on the CPU, the cores split between the workers: OMP_NUM_THREADS, kept all along)."""
    devices = parse_gpu_flag(gpu) if gpu else 'cpu'
    if isinstance(devices, list):
        if workers not in (None, len(devices)):
            raise ConfigError(f'--workers {workers} with --gpu {gpu}: one worker per GPU ({len(devices)})')
        return [(['--gpu', str(d)], {}) for d in devices]
    workers = workers or 1
    if workers < 1:
        raise ConfigError(f'--workers {workers}: expected 1 or more')
    if workers == 1:
        return [([], {})]
    threads = str(max(1, machine_cores() // workers))
    return [(['--gpu', gpu] if gpu else [], {'OMP_NUM_THREADS': threads, 'MKL_NUM_THREADS': threads})] * workers


@dataclasses.dataclass
class Sweep:
    """One experiment per combination of `--sweep key=v1,v2` values and `--seeds`, checked but not
    started: the entry point validates `configs`, then calls `start`."""
    plan: Plan
    base: str                      # the sweep's name: runs are <base>_<short key><value>...
    grid: list[list[str]]          # each run's overrides
    names: list[str]
    configs: list[Config]

    def start(self) -> int:
        """Run the experiments, `--workers` (or one per --gpu device) at a time. Finished ones
        (result.yaml) are skipped and interrupted ones resumed, so running the same command again
        continues a sweep. Then summary.csv and summary.md; status 1 if a run failed. With
        --summarize only the summary of the runs as they are."""
        args, save_root = self.plan.args, Path(self.plan.args.save_root)
        commands = [[sys.executable, str(PROJECT_ROOT / self.plan.script), '--config', args.config, '--name', name,
                     '--save-root', args.save_root, '--auto-resume', *args.overrides, *combo]
                    for name, combo in zip(self.names, self.grid)]
        sweep_dir = save_root / f'{self.base}-sweep'
        short = short_keys([c.partition('=')[0] for c in self.grid[0]])
        if args.summarize:   # the runs as they are, none started
            sweep_dir.mkdir(parents=True, exist_ok=True)
            print(summarize_sweep(save_root, self.names, self.grid, short, self.configs[0], sweep_dir))
            return 0
        if args.launcher == 'slurm':
            from lightyaml.launch.slurm import LAUNCH_FLAGS, without_flags, write_array_script  # SLURM only
            summary = [str(PROJECT_ROOT / self.plan.script), *without_flags(self.plan.argv, LAUNCH_FLAGS)]
            return write_array_script(sweep_dir, [c[1:] for c in commands], [*summary, '--summarize'], args)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(sweep_dir / 'sweep.yaml', dump_yaml({'command': ' '.join(mask_command(self.plan.command)),
                                                           'experiments': self.names}))
        free = worker_slots(args.gpu, args.workers)
        at_once = len(free) > 1

        def one(name: str, command: list[str]) -> int:
            if (save_root / name / 'result.yaml').is_file():
                return 0
            gpu_flag, env = free.pop()
            try:
                say(f'sweep: {name}')
                # The sweep's name becomes each run's group (W&B) or experiment (MLflow) in the trackers;
                # runs going at once prefix their lines with their name.
                return run_process([*command, *gpu_flag], {**os.environ, **env, GROUP_ENV: self.base},
                                   name if at_once else None)
            finally:
                free.append((gpu_flag, env))
        with concurrent.futures.ThreadPoolExecutor(len(free)) as pool:
            codes = list(pool.map(one, self.names, commands))
        print(summarize_sweep(save_root, self.names, self.grid, short, self.configs[0], sweep_dir))
        return 0 if not any(codes) else 1


def plan_sweep(plan: Plan) -> Sweep:
    """The sweep `--sweep`/`--seeds` ask for; its folders must be free or hold the same config."""
    args = plan.args
    if not args.config:
        raise ConfigError('--sweep needs --config')
    base = args.name or Path(args.config).stem
    check_experiment_name(base)
    grid = sweep_grid(args.sweep, args.seeds)
    short = short_keys([c.partition('=')[0] for c in grid[0]])
    names = [combo_name(base, combo, short) for combo in grid]
    configs = [load_config(args.config, [*args.overrides, *combo]) for combo in grid]
    for cfg in configs:
        check_no_masked_secrets(cfg)   # a saved config.yaml as the sweep's base
        check_gpu_asked(cfg, args.gpu)
    problems = [p for p in (check_same_config(Path(args.save_root) / n, c) for n, c in zip(names, configs)) if p]
    if problems:
        raise ConfigError(*(f'--sweep: {p}; choose another --name' for p in problems))
    worker_slots(args.gpu, args.workers)   # a bad --gpu or --workers is said before anything runs
    return Sweep(plan, base, grid, names, configs)


def summarize_sweep(save_root: Path, names: Sequence[str], grid: Sequence[Sequence[str]], short: Mapping[str, str],
                    cfg: Mapping, out: Path) -> str:
    """summary.csv and summary.md: the monitored metric (best value of each run) per combination,
    mean ± std over seeds, and the folders summarised. Returns the markdown."""
    monitor = (cfg.get('checkpoint') or {}).get('monitor') or 'val/loss'
    groups: dict[tuple, list[tuple[str, Optional[float]]]] = {}
    for name, combo in zip(names, grid):
        values = tuple(c for c in combo if not c.startswith('seed='))
        groups.setdefault(values, []).append((name, run_value(save_root / name, monitor)))
    keys = [short[c.partition('=')[0]] for c in next(iter(groups))]
    rows = []
    for combo, runs in groups.items():
        done = [v for _, v in runs if v is not None]
        mean = statistics.fmean(done) if done else float('nan')
        std = statistics.stdev(done) if len(done) > 1 else 0.0
        rows.append(([c.partition('=')[2] for c in combo], len(done), len(runs), mean, std, runs))
    with open(out / 'summary.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(keys + ['runs_done', 'runs', f'{monitor} mean', f'{monitor} std', 'experiments'] +
                        [f'run {i}' for i in range(max(len(r[5]) for r in rows))])
        writer.writerows([*values, done, count, mean, std, ' '.join(n for n, _ in runs),
                          *('' if v is None else v for _, v in runs)] for values, done, count, mean, std, runs in rows)
    header = keys + [f'{monitor} (mean ± std)', 'runs']
    lines = [f"| {' | '.join(header)} |", f"|{' --- |' * len(header)}"]
    lines += [f"| {' | '.join([*values, f'{mean:.4f} ± {std:.4f}', f'{done}/{count}'])} |"
              for values, done, count, mean, std, _ in rows]
    markdown = '\n'.join(lines) + '\n'
    (out / 'summary.md').write_text(markdown)
    return markdown
