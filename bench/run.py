"""Does the template slow training down? One command measures it on this machine:

    python bench/run.py                 # the full size: a few minutes on 2 CPU cores
    python bench/run.py --rounds 7      # more alternations, steadier medians
    python bench/run.py --tiny          # checks that every run works (the smoke test; no target judged)
    python bench/run.py --threads 1     # torch threads per run (default: torch's own choice)
    python bench/run.py --workload conv # one workload only
    python bench/run.py --workload images   # the image-folder loaders only
    python bench/run.py --only contention,quickstart   # the parts named (steps, contention, quickstart)

Three parts, all run by default: `steps` (the table below), `contention` (two runs at once, each
against itself alone: bench/contention.py) and `quickstart` (the digits quickstart from command to
exit, and its parts: bench/quickstart.py).

Six ways to train the same model on the same data, with the same batch size and number of steps:
  floor        a minimal hand-written loop indexing in-memory tensors by batch
  floor + mallopt  the same, after the two glibc settings both entry points make before training
               (utils.keep_freed_memory): what the floor would be with that fast path
  train.py     the template without Lightning, on a config this script writes
  train_pl.py  the template with Lightning, on the same config
  plain PL     a Lightning script written the usual way: a per-sample DataLoader, self.log every
               step, Lightning's default logger, checkpointing and progress bar
  bare PL      Lightning's own minimum, for reference: the template's batches, a training_step
               that returns the loss, and no logger, checkpoints, progress bar or model summary
and two workloads: `mlp`, digits through a 64-256-10 MLP with batches of 32 (overhead-bound), and
`conv`, a small conv net (PyTorch's MNIST example) on synthetic 1x28x28 10-class images with
batches of 64 (compute-bound). Everything runs on the CPU.

A third workload, `images`, measures loading alone: a folder of 32x32 RGB PNG files in
torchvision's layout (root/<class>/<file>, written by this script), read in batches of 64 by 2
worker processes with the same transforms (random crop with 4 pixels of padding, horizontal flip,
Normalize), two ways:
  torchvision ImageFolder  the plain script: ImageFolder + DataLoader(shuffle, workers, persistent)
  lightyaml loader         the default data module's loader of a `labelled_images` dataset
Its "step" is one batch; its ratio is images per second of lightyaml over the plain script, from
the mean time per batch (workers deliver batches in bursts, so the mean is the throughput).

How a step is timed: every run is a fresh process, `python bench/run.py --child ...`. The child
registers a global hook that torch calls after every optimizer step
(`torch.optim.optimizer.register_optimizer_step_post_hook`), which appends a timestamp, and then
runs the variant: for train.py and train_pl.py the real script through `runpy`, with its real
command line, on a temporary experiment folder. The interval between two optimizer steps is one
whole training step (batch, forward, backward, optimizer, logging, progress bar), measured the
same way for all six, and nothing in the measured code knows it is measured. The first
`WARMUP_STEPS` intervals are left out; the median is the typical step, the mean also carries
what happens once an epoch (checkpoints, log lines). Start-up is the wall time from just before the process
starts to its first optimizer step (interpreter, imports, config checks, experiment folder,
data); peak memory is the process's maximum resident set size.

Runs alternate (one run of each variant per round, in an order that rotates every round), so
a machine that gets busier slows them all alike. Each figure is the median over rounds of one
run's median step; the ratio to the floor is the median of the rounds' ratios. On a machine
others are using the figures still move (worst for OpenMP threads, which wait for each other at
every parallel operation): look at the load averages printed with the table, or use --threads 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import yaml

from images import LOADER_VARIANTS, load_images, write_image_files

ROOT = Path(__file__).resolve().parents[1]
PARTS = ('steps', 'contention', 'quickstart')
VARIANTS = ('floor', 'floor + mallopt', 'train.py', 'train_pl.py', 'plain PL', 'bare PL')
COLUMNS = ('workload', 'variant', 'steps', 'median ms/step', 'x floor', 'mean ms/step', 'start-up to 1st step',
           'peak RSS')
WARMUP_STEPS = 10
LR = 1e-3
# name: model spec, dataset spec (train split), batch size, epochs
WORKLOADS = {
    'mlp': {'model': {'name': 'mlp', 'args': {'in_dim': 64, 'hidden': [256], 'out_dim': 10}},
            'data': {'name': 'digits', 'args': {'split': 'train'}}, 'batch_size': 32, 'epochs': 20},
    'conv': {'model': {'name': 'bench_convnet'},
             'data': {'name': 'bench_images', 'args': {'size': 64 * 40}}, 'batch_size': 64, 'epochs': 4},
    'images': {'files': 64 * 80, 'size': 32, 'batch_size': 64, 'workers': 2, 'epochs': 3,
               'transforms': [{'name': 'RandomCrop', 'args': {'size': 32, 'padding': 4}},
                              {'name': 'RandomHorizontalFlip'},
                              {'name': 'Normalize', 'args': {'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25]}}]},
}
# The issues' targets: what, the ratio's two rows (or one row's start-up in seconds), the bound,
# and the statistic compared ('median' step unless given).
TARGETS = [('train.py / floor, mlp', ('mlp', 'train.py'), ('mlp', 'floor'), '<=', 1.10),
           ('train.py / floor, conv', ('conv', 'train.py'), ('conv', 'floor'), '<=', 1.10),
           ('train_pl.py / floor, conv', ('conv', 'train_pl.py'), ('conv', 'floor'), '<=', 1.05),
           ('train_pl.py / floor, mlp', ('mlp', 'train_pl.py'), ('mlp', 'floor'), '<=', 2.0),
           ('plain PL / train_pl.py, mlp', ('mlp', 'plain PL'), ('mlp', 'train_pl.py'), '>=', 1.8),
           ('train.py start-up, mlp (s)', ('mlp', 'train.py'), None, '<=', 3.5),
           ('train_pl.py start-up, mlp (s)', ('mlp', 'train_pl.py'), None, '<=', 7.0),
           ('lightyaml loader / torchvision ImageFolder images/s, images', ('images', 'torchvision ImageFolder'),
            ('images', 'lightyaml loader'), '>=', 0.95, 'mean')]


def variants(workload_name: str) -> tuple[str, ...]:
    """The ways a workload is run: training loops, or (for `images`) loaders."""
    return LOADER_VARIANTS if workload_name == 'images' else VARIANTS


# ------------------------------------------------------------------------- the parent: run, report

def workloads(tiny: bool) -> dict[str, dict]:
    """The workloads; `tiny` shrinks them to a few steps each (for the smoke test)."""
    if not tiny:
        return WORKLOADS
    return {'mlp': dict(WORKLOADS['mlp'], epochs=1,   # 5% of the digits: 3 batches
                        data={'name': 'digits', 'args': {'split': 'train', 'val_fraction': 0.8}}),
            'conv': dict(WORKLOADS['conv'], epochs=1, data={'name': 'bench_images', 'args': {'size': 64 * 3}}),
            'images': dict(WORKLOADS['images'], files=64 * 4, epochs=1)}


def write_config(workload: dict, path: Path) -> Path:
    """The config train.py and train_pl.py both run: the workload as a user would write it."""
    config = {
        'seed': 0,
        'data_module': {'name': 'default', 'args': {'train': workload['data'], 'batch_size': workload['batch_size']}},
        'train_wrapper': {'name': 'base', 'args': {'model_spec': workload['model'], 'loss_spec': {'name': 'ce'},
                                                   'optim_spec': {'name': 'Adam', 'args': {'lr': LR}}}},
        'trainer_params': {'max_epochs': workload['epochs'], 'accelerator': 'cpu', 'devices': 1},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_once(variant: str, workload_name: str, workload: dict, config: Path, work: Path, tag: str,
             threads: Optional[int] = None) -> dict:
    """One run in a fresh process: step times, start-up and peak memory."""
    out = work / f'{tag}.json'
    command = [sys.executable, str(Path(__file__).resolve()), '--child', variant, '--spec', json.dumps(workload),
               '--config', str(config), '--workdir', str(work), '--tag', tag, '--out', str(out)]
    command += ['--threads', str(threads)] if threads else []
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f'{variant} on {workload_name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
    record = json.loads(out.read_text())
    steps = record['steps']
    skip = min(WARMUP_STEPS, max(len(steps) - 2, 0))
    intervals = [b - a for a, b in zip(steps[skip:], steps[skip + 1:])]
    offset = record['first_step_wall'] - steps[0]   # perf_counter -> wall clock
    return {'median': statistics.median(intervals), 'mean': statistics.fmean(intervals), 'steps': len(steps),
            'startup': record['first_step_wall'] - started, 'peak_mb': record['peak_mb'],
            'wall_steps': [t + offset for t in steps]}


def measure(rounds: int, tiny: bool, threads: Optional[int], log: Callable[[str], None],
            only: Optional[str] = None) -> dict[tuple[str, str], list[dict]]:
    """Every variant on every workload (or `only` one), `rounds` times, alternating."""
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix='lightyaml-bench-') as tmp:
        work = Path(tmp)
        specs = {name: w for name, w in workloads(tiny).items() if only in (None, name)}
        if 'images' in specs:
            specs['images'] = dict(specs['images'], root=str(write_image_files(specs['images'], work / 'images')))
        configs = {name: write_config(w, work / f'{name}.yaml') for name, w in specs.items() if name != 'images'}
        jobs = [(r, name, variant) for r in range(rounds) for name in specs
                for variant in variants(name)[r % len(variants(name)):] + variants(name)[:r % len(variants(name))]]

        def run_job(job: tuple[int, str, str]) -> dict:
            r, name, variant = job
            tag = f"{name}-{variant.replace(' ', '_').replace('.', '_')}-{r}"
            return run_once(variant, name, specs[name], configs.get(name, work), work, tag, threads)

        # --tiny only checks that everything runs, so it runs two processes at a time; a measurement
        # runs one, alone.
        with ThreadPoolExecutor(max_workers=2 if tiny else 1) as pool:
            for (r, name, variant), result in zip(jobs, pool.map(run_job, jobs)):
                results.setdefault((name, variant), []).append(result)
                log(f"round {r + 1}/{rounds} {name:6} {variant:11} {result['median'] * 1e3:7.2f} ms/step  "
                    f"start-up {result['startup']:.1f}s")
    return results


def ratio(results: dict, key: tuple[str, str], base: tuple[str, str], stat: str = 'median') -> float:
    """Median over rounds of key's median (or mean) step / base's in the same round."""
    return statistics.median(a[stat] / b[stat] for a, b in zip(results[key], results[base]))


def machine_line(rounds: int, threads: Optional[int]) -> str:
    """The machine, the versions, the thread settings; `{loads}` is filled in by main."""
    from importlib.metadata import version

    import torch  # versions only
    omp = ', '.join(f'{k}={os.environ[k]}' for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY') if k in os.environ)
    return (f'Machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()}; Python {platform.python_version()}, '
            f"torch {torch.__version__}, pytorch-lightning {version('pytorch-lightning')}, "
            f"torch threads: {threads or torch.get_num_threads()}{f' ({omp} set)' if omp else ''}. "
            f'{rounds} rounds; {{loads}}.')


def report(results: dict, rounds: int, threads: Optional[int], judged: bool = True) -> str:
    """The markdown table, the machine it ran on, and the issue's targets (unless not `judged`: --tiny)."""
    lines = [machine_line(rounds, threads), '',
             '| ' + ' | '.join(COLUMNS) + ' |', '| --- | --- |' + ' ---: |' * (len(COLUMNS) - 2)]
    for name in dict.fromkeys(k[0] for k in results):
        for variant in variants(name):   # "x floor": against the workload's first variant
            runs = results[name, variant]
            step, mean, startup, peak = (statistics.median(run[key] for run in runs)
                                         for key in ('median', 'mean', 'startup', 'peak_mb'))
            lines.append(f"| {name} | {variant} | {runs[0]['steps']} | {step * 1e3:.2f} | "
                         f"{ratio(results, (name, variant), (name, variants(name)[0])):.2f} | {mean * 1e3:.2f} | "
                         f"{startup:.1f} s | {peak:.0f} MB |")
    if ('images', LOADER_VARIANTS[0]) in results:
        batch = WORKLOADS['images']['batch_size']
        lines += ['', f'images (a step is a batch of {batch}): ' + ', '.join(
            f"{v} {statistics.median(batch / r['mean'] for r in results['images', v]):.0f} images/s"
            for v in LOADER_VARIANTS)]
    lines += ['', 'Targets:' if judged else 'Targets: not judged (--tiny only checks that every run works)']
    for what, row, base, bound, limit, *stat in TARGETS if judged else ():
        if row not in results:
            continue
        value = ratio(results, row, base, *stat) if base else statistics.median(r['startup'] for r in results[row])
        met = value <= limit if bound == '<=' else value >= limit
        lines.append(f"- {what}: {value:.2f} ({bound} {limit}) {'met' if met else 'NOT met'}")
    return '\n'.join(lines)


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else what platform knows)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------- the child: one measured run

def child(args: argparse.Namespace) -> None:
    """Time every optimizer step of one variant, then write steps, first-step time and peak memory."""
    wall0, perf0 = time.time(), time.perf_counter()
    sys.path.insert(0, str(ROOT))
    if args.child == 'quickstart':
        from quickstart import child as quickstart_child
        quickstart_child(args, perf0, wall0)
    if args.child in ('train.py', 'train_pl.py'):   # what the entry points do before importing torch
        from utils import pause_gc_for_start_up, set_thread_defaults
        set_thread_defaults()
        pause_gc_for_start_up()
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    if args.threads:
        torch.set_num_threads(args.threads)
    steps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: steps.append(time.perf_counter()))
    register_bench_parts()
    workload = json.loads(args.spec)
    status = 0
    try:
        if args.child in LOADER_VARIANTS:
            load_images(workload, args.child, steps)
        elif args.child.startswith('floor'):
            if args.child == 'floor + mallopt':
                from utils import keep_freed_memory
                keep_freed_memory()
            floor(workload)
        elif args.child == 'plain PL':
            plain_lightning(workload, Path(args.workdir) / args.tag)
        elif args.child == 'bare PL':
            bare_lightning(workload)
        else:   # the real entry point, as `python train.py --config ...` runs it
            sys.argv = [args.child, '--config', args.config, '--save-root', args.workdir, '--name', args.tag]
            runpy.run_path(str(ROOT / args.child), run_name='__main__')
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == 'darwin' else 2**10)
    if status == 0 and steps:
        Path(args.out).write_text(json.dumps({'steps': steps, 'first_step_wall': wall0 + steps[0] - perf0,
                                              'peak_mb': peak}))
    sys.exit(status)


def register_bench_parts() -> None:
    """The conv workload's data and model, registered in this process only (`bench_*`)."""
    import torch
    from torch import nn

    from datasets import register as register_dataset
    from datasets.tensor_dict import TensorDictDataset
    from models import register as register_model

    @register_dataset('bench_images')
    class SyntheticImages(TensorDictDataset):
        """`size` seeded random 1x28x28 images with labels 0-9."""

        def __init__(self, size: int = 2560, seed: int = 0) -> None:
            generator = torch.Generator().manual_seed(seed)
            super().__init__({'image': torch.randn(size, 1, 28, 28, generator=generator),
                              'label': torch.randint(0, 10, (size,), generator=generator)})

    @register_model('bench_convnet')
    class ConvNet(nn.Module):
        """PyTorch's MNIST example network: 3x3 convolutions of 32 and 64 channels, max-pool, 128 units."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, batch: dict) -> torch.Tensor:
            return self.net(batch['image'])


def build_workload(workload: dict) -> tuple[Any, dict]:
    """The workload's model (seeded as the entry points seed it) and training tensors."""
    import torch

    from datasets import make as make_dataset
    from models import make as make_model
    torch.manual_seed(0)
    return make_model(workload['model']), make_dataset(workload['data']).tensors


def floor(workload: dict) -> None:
    """The floor: a minimal loop over in-memory tensors, a batch by index each step."""
    import torch
    from torch.nn import functional as F
    model, data = build_workload(workload)
    images, labels = data['image'], data['label']
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    size = workload['batch_size']
    for _ in range(workload['epochs']):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), size):
            index = order[start:start + size]
            loss = F.cross_entropy(model({'image': images[index]}), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def plain_lightning(workload: dict, root: Path) -> None:
    """A Lightning script written the usual way: per-sample DataLoader, self.log every step, and
    Lightning's defaults (logger, checkpoints, progress bar, model summary)."""
    import pytorch_lightning as pl
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    class Classifier(pl.LightningModule):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
            images, labels = batch
            loss = F.cross_entropy(self.model({'image': images}), labels)
            self.log('train_loss', loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=LR)

    model, data = build_workload(workload)
    loader = DataLoader(TensorDataset(data['image'], data['label']), batch_size=workload['batch_size'], shuffle=True)
    trainer = pl.Trainer(max_epochs=workload['epochs'], accelerator='cpu', devices=1, default_root_dir=root)
    trainer.fit(Classifier(model), loader)


def bare_lightning(workload: dict) -> None:
    """What Lightning's loop costs by itself: the template's batches, a training_step returning the
    loss, and every optional part of the Trainer switched off."""
    import pytorch_lightning as pl
    import torch
    from torch.nn import functional as F

    from datasets.data_module import DataModule

    class Classifier(pl.LightningModule):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.model(batch), batch['label'])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=LR)

    model, _ = build_workload(workload)
    loader = DataModule(train=workload['data'], batch_size=workload['batch_size']).train_dataloader()
    trainer = pl.Trainer(max_epochs=workload['epochs'], accelerator='cpu', devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Classifier(model), loader)


# ------------------------------------------------------------------------------------ command line

def main() -> None:
    """Parse the command line; run the benchmark (or, with --child, one measured run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=3, help='runs of each variant, alternating (default 3)')
    parser.add_argument('--workload', choices=list(WORKLOADS), help='measure one workload only')
    parser.add_argument('--tiny', action='store_true', help='a few steps per run, one round: checks it all runs')
    parser.add_argument('--threads', type=int, help="torch threads in every run (default: torch's own choice)")
    parser.add_argument('--out', help='also write the tables to this file (markdown)')
    parser.add_argument('--only', default=','.join(PARTS), help=f"the parts to run, comma-separated (default: all of "
                                                                f"{','.join(PARTS)})")
    for internal in ('--child', '--spec', '--config', '--workdir', '--tag'):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    parts = [p.strip() for p in args.only.split(',') if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--only {args.only}: expected some of {', '.join(PARTS)}")
    rounds = 1 if args.tiny else args.rounds
    tables = []
    for part in PARTS:
        if part in parts:
            load_before = ' '.join(f'{x:.1f}' for x in os.getloadavg())
            table = run_part(part, rounds, args)
            tables.append(table.replace('{loads}', f"load average {load_before} before, "
                                                   f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} after"))
            print(tables[-1] + '\n', flush=True)
    if args.out:
        Path(args.out).write_text('\n\n'.join(tables) + '\n')


def run_part(part: str, rounds: int, args: argparse.Namespace) -> str:
    """One part of the benchmark, measured; its markdown."""
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if part == 'steps':
        results = measure(rounds, args.tiny, args.threads, log, args.workload)
        return report(results, rounds, args.threads, judged=not args.tiny)
    if part == 'contention':
        import contention
        with tempfile.TemporaryDirectory(prefix='lightyaml-bench-') as tmp:
            work = Path(tmp)
            specs = {name: dict(w, epochs=w['epochs'] if args.tiny else contention.CONTENTION_EPOCHS[name])
                     for name, w in workloads(args.tiny).items()
                     if name in contention.CONTENTION_EPOCHS and args.workload in (None, name)}
            configs = {name: write_config(w, work / f'{name}.yaml') for name, w in specs.items()}
            results = contention.measure(rounds, specs, lambda variant, name, spec, tag, threads: run_once(
                variant, name, spec, configs[name], work, tag, threads or args.threads), log)
        return machine_line(rounds, args.threads) + '\n\n' + contention.report(results, rounds, not args.tiny)
    import quickstart
    figures = quickstart.measure(rounds, args.tiny, log)
    return machine_line(rounds, args.threads) + '\n\n' + quickstart.report(figures, rounds, not args.tiny)


if __name__ == '__main__':
    main()
