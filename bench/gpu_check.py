"""The GPU figures and checks of issue 26, in one short run for a session that is lent a GPU:

    python bench/gpu_check.py                 # on a CUDA machine: about 5 minutes; prints bench/README.md's lines
    python bench/gpu_check.py --only steps    # some parts only: fsdp, steps, loader (comma-separated)
    python bench/gpu_check.py --cpu-smoke     # on the CPU, tiny sizes, a minute: every part runs

Three parts:
- fsdp: Lightning's FSDP through train_pl.py on one GPU (one device is enough for FSDP to run), on
  digits: the base wrapper with the `ema` callback under `strategy: {name: fsdp, args:
  {auto_wrap_policy: [torch.nn.Linear], state_dict_type: sharded}}` and with `full` checkpoints, and
  the GAN wrapper sharded. Each trains 2 epochs straight, and 1 epoch then `--resume` for the 2nd;
  the two final checkpoints (weights, the EMA's average) are compared bit for bit, and `--test`
  reads the sharded folder. (On the CPU: that FSDP is refused in one line.)
- steps: ms per training step of ResNet-18 (models/resnet.py) on 32x32 synthetic RGB images,
  batch 512, bf16-mixed, channels_last, the data held on the GPU: a hand-written loop, train.py and
  train_pl.py on the same config, each in a fresh process, alternating over rounds. A step hook
  synchronizes the GPU every 10 optimizer steps and takes the time: a step is a window's time
  over 10, the first 3 windows left out; the figure is the median over windows, then over rounds.
- loader: images per second of the image-folder loaders (lightyaml's `labelled_images` and a plain
  torchvision ImageFolder, bench/images.py), each batch copied to the GPU, with the machine's workers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from images import LOADER_VARIANTS, image_loader, write_image_files

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / 'configs' / 'digits.yaml'
VARIANTS = ('loop', 'train.py', 'train_pl.py')
TARGET = 1.05        # the bound on train.py's and train_pl.py's step over the loop's
# gpu: 40 steps an epoch, 320 a run (32 windows); cpu (--cpu-smoke): 6 steps a run, in windows of 2
SIZES = {'gpu': {'images': 512 * 40, 'batch': 512, 'epochs': 8, 'rounds': 2, 'window': 10, 'warmup': 3,
                 'files': 512 * 20, 'runs_epochs': 2},
         'cpu': {'images': 16, 'batch': 8, 'epochs': 3, 'rounds': 1, 'window': 2, 'warmup': 0, 'files': 8 * 4,
                 'runs_epochs': 1}}


# ------------------------------------------------------------------------------------------ steps

def steps_config(size: dict, device: str, path: Path) -> Path:
    """The config train.py and train_pl.py both run, as a user would write it."""
    config = {
        'seed': 0,
        'data_module': {'name': 'default', 'args': {
            'train': {'name': 'gpu_check_images', 'args': {'size': size['images']}}, 'batch_size': size['batch'],
            'device': 'cuda' if device == 'gpu' else None}},
        'train_wrapper': {'name': 'base', 'args': {
            'model_spec': {'name': 'resnet18', 'args': {'in_channels': 3, 'num_classes': 10}},
            'loss_spec': {'name': 'ce'}, 'optim_spec': {'name': 'SGD', 'args': {'lr': 0.05, 'momentum': 0.9}},
            'channels_last': True}},
        'trainer_params': {'max_epochs': size['epochs'], 'accelerator': device, 'devices': 1,
                           'precision': 'bf16-mixed', 'enable_model_summary': False, 'log_every_n_steps': 50},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def register_images() -> None:
    """`gpu_check_images`: `size` seeded random 3x32x32 images with labels 0-9 (this process only)."""
    import torch

    from datasets import register
    from datasets.tensor_dict import TensorDictDataset

    @register('gpu_check_images')
    class SyntheticImages(TensorDictDataset):
        def __init__(self, size: int = 512) -> None:
            generator = torch.Generator().manual_seed(0)
            super().__init__({'image': torch.rand(size, 3, 32, 32, generator=generator),
                              'label': torch.randint(0, 10, (size,), generator=generator)})


def loop(config: dict) -> None:
    """The hand-written loop: the same model, optimizer, precision and batches, nothing else."""
    import torch
    from torch.nn import functional as F

    from datasets import make as make_dataset
    from models import make as make_model
    args, params = config['train_wrapper']['args'], config['trainer_params']
    device = torch.device('cuda' if params['accelerator'] == 'gpu' else 'cpu')
    torch.manual_seed(0)
    model = make_model(args['model_spec']).to(device, memory_format=torch.channels_last)
    data = make_dataset(config['data_module']['args']['train']).tensors
    images, labels = data['image'].to(device), data['label'].to(device)
    optimizer = torch.optim.SGD(model.parameters(), **args['optim_spec']['args'])
    size = config['data_module']['args']['batch_size']
    for _ in range(params['max_epochs']):
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(labels), size):
            index = order[start:start + size]
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model({'image': images[index]}), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def child(args: argparse.Namespace) -> None:
    """One measured run: a synchronized timestamp every --window optimizer steps, written to --out."""
    sys.path.insert(0, str(ROOT))
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    stamps: list[float] = []
    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1
        if count[0] % args.window == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
    register_optimizer_step_post_hook(hook)
    register_images()
    if args.child == 'loop':
        loop(yaml.safe_load(Path(args.config).read_text()))
    else:   # the real entry point, as `python train.py --config ...` runs it
        sys.argv = [args.child, '--config', args.config, '--save-root', args.workdir, '--name', args.tag,
                    'trainer_params.enable_progress_bar=false']
        try:
            runpy.run_path(str(ROOT / args.child), run_name='__main__')
        except SystemExit as e:
            if e.code:
                raise
    Path(args.out).write_text(json.dumps(stamps))


def step_times(size: dict, device: str, work: Path) -> dict[str, float]:
    """Median ms per step of each variant, over rounds that alternate the variants."""
    config = steps_config(size, device, work / 'steps.yaml')
    found: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(size['rounds']):
        for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
            out, tag = work / f'{variant}-{r}.json', f'steps-{variant.replace(".", "-")}-{r}'
            done = subprocess.run([sys.executable, __file__, '--child', variant, '--config', str(config), '--workdir',
                                   str(work), '--tag', tag, '--out', str(out), '--window', str(size['window'])],
                                  cwd=ROOT, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f'{variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
            stamps = json.loads(out.read_text())[size['warmup']:]   # cuDNN's autotuning, the allocator growing
            windows = [(b - a) / size['window'] * 1000 for a, b in zip(stamps, stamps[1:])]
            found[variant].append(statistics.median(windows))
    return {v: statistics.median(times) for v, times in found.items()}


# ----------------------------------------------------------------------------------------- loader

def loader_rates(size: dict, device: str, work: Path) -> dict[str, float]:
    """Images per second of each image-folder loader, every batch copied to the device."""
    import torch
    workers = min(8, os.cpu_count() or 1)
    workload = {'files': size['files'], 'size': 32, 'batch_size': size['batch'], 'workers': workers,
                'root': str(write_image_files({'files': size['files'], 'size': 32}, work / 'images')),
                'transforms': [{'name': 'RandomCrop', 'args': {'size': 32, 'padding': 4}},
                               {'name': 'RandomHorizontalFlip'},
                               {'name': 'Normalize', 'args': {'mean': [0.5] * 3, 'std': [0.25] * 3}}]}
    target = torch.device('cuda' if device == 'gpu' else 'cpu')
    rates = {}
    for variant in LOADER_VARIANTS:
        loader, seen = image_loader(workload, variant), 0
        for _ in loader:   # the first epoch starts the workers: not timed
            pass
        started = time.perf_counter()
        for batch in loader:
            image = batch['image'] if isinstance(batch, dict) else batch[0]
            seen += len(image.to(target, non_blocking=True))
        if target.type == 'cuda':
            torch.cuda.synchronize()
        rates[variant] = seen / (time.perf_counter() - started)
    return rates


# ------------------------------------------------------------------------------------------- fsdp

def train_pl(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'train_pl.py', *args, '--save-root', str(work / 'fsdp'),
                           'trainer_params.enable_progress_bar=false'], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def resumes_exactly(work: Path, name: str, epochs: int, *config: str) -> str:
    """Train `epochs` straight and `epochs - 1` + --resume: whether the last checkpoints are equal."""
    sys.path.insert(0, str(ROOT))

    from lightyaml.run.checkpoint_files import read_checkpoint
    for run, epochs_first in ((f'{name}-straight', epochs), (f'{name}-resumed', epochs - 1)):
        done = train_pl(work, *config, '--name', run, f'trainer_params.max_epochs={epochs_first}')
        if done.returncode != 0:
            return f'FAILED ({run}, exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]})'
    done = train_pl(work, '--resume', str(work / 'fsdp' / f'{name}-resumed'), f'trainer_params.max_epochs={epochs}')
    if done.returncode != 0:
        return f'FAILED (resume, exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]})'
    a, b = (read_checkpoint(work / 'fsdp' / f'{name}-{k}' / 'ckpt' / 'last.ckpt', name)
            for k in ('straight', 'resumed'))
    pairs = [(a['state_dict'], b['state_dict'])]
    if 'EMA' in a.get('callbacks', {}):
        pairs.append((a['callbacks']['EMA']['weights'], b['callbacks']['EMA']['weights']))
    worst = max((a_[k].float() - b_[k].float()).abs().max().item() for a_, b_ in pairs for k in a_)
    kind = 'a folder of shards' if (work / 'fsdp' / f'{name}-straight' / 'ckpt' / 'last.ckpt').is_dir() else 'a file'
    return f"resume {'bit-exact' if worst == 0 else f'differs by up to {worst:.3g}'} (last.ckpt: {kind})"


def fsdp_checks(device: str, work: Path, epochs: int) -> list[str]:
    """The FSDP lines: each run's resume, and --test of a sharded folder; on the CPU the refusal."""
    strategy = 'trainer_params.strategy={name: fsdp, args: {auto_wrap_policy: [torch.nn.Linear], state_dict_type: %s}}'
    if device == 'cpu':
        done = train_pl(work, '--config', str(DIGITS), strategy % 'sharded')
        line = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else ['']
        return [f'- fsdp on the CPU: exit {done.returncode}, {line[0]}']
    gpu = ['trainer_params.accelerator=gpu', 'trainer_params.devices=1', 'trainer_params.deterministic=true']
    base, gan = ['--config', str(DIGITS), *gpu], ['--config', str(ROOT / 'configs' / 'digits-gan.yaml'), *gpu]
    ema = 'callbacks=[{name: ema, args: {decay: 0.9}}]'
    lines = [f"- fsdp, base wrapper + ema, {kind}: {resumes_exactly(work, kind, epochs, *base, ema, strategy % kind)}"
             for kind in ('sharded', 'full')]
    lines.append(f"- fsdp, gan wrapper, sharded: {resumes_exactly(work, 'gan', epochs, *gan, strategy % 'sharded')}")
    done = train_pl(work, '--test', str(work / 'fsdp' / 'sharded-straight'), '--ckpt', 'last')
    outcome = (f'ok: {done.stdout.strip().splitlines()[-1]}' if done.returncode == 0 else
               f'FAILED (exit {done.returncode}): {done.stderr[-500:]}')
    lines.append(f'- fsdp, --test of the sharded folder: {outcome}')
    return lines


# ------------------------------------------------------------------------------------------- main

def machine(device: str) -> str:
    import torch
    gpu = torch.cuda.get_device_name(0) if device == 'gpu' else f'no GPU ({platform.processor() or platform.machine()})'
    return (f'Machine: {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores; '
            f"{time.strftime('%Y-%m-%d')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', default='fsdp,steps,loader', help='the parts to run, comma-separated')
    parser.add_argument('--cpu-smoke', action='store_true', help='on the CPU, tiny sizes: checks that every part runs')
    for internal in ('--child', '--config', '--workdir', '--tag', '--out'):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    parser.add_argument('--window', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))   # the project's packages (bench/images.py's loaders use them)
    if args.child:
        child(args)
        return
    import torch
    device = 'cpu' if args.cpu_smoke else 'gpu'
    if device == 'gpu' and not torch.cuda.is_available():
        sys.exit('error: bench/gpu_check.py: no CUDA device here; run it where a GPU is, or with --cpu-smoke')
    size, parts = SIZES[device], args.only.split(',')
    print(machine(device), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if 'fsdp' in parts:
            print('\n'.join(fsdp_checks(device, work, size['runs_epochs'])), flush=True)
        if 'steps' in parts:
            times = step_times(size, device, work)
            print(f"\nResNet-18, 32x32 synthetic images, batch {size['batch']}, bf16-mixed, channels_last, data on the "
                  f'device; median ms per step (over {size["window"]}-step windows, then {size["rounds"]} rounds)\n')
            print('| variant | ms/step | x loop | images/s |\n| --- | --- | --- | --- |')
            for variant, ms in times.items():
                print(f"| {variant} | {ms:.2f} | {ms / times['loop']:.3f} | {size['batch'] / ms * 1000:.0f} |")
            for variant in VARIANTS[1:]:
                ratio = times[variant] / times['loop']
                print(f"- target: {variant} / loop <= {TARGET}: {ratio:.3f} ({'met' if ratio <= TARGET else 'missed'})")
        if 'loader' in parts:
            rates = loader_rates(size, device, work)
            print(f"\nimage-folder loaders, {size['files']} 32x32 PNGs, batch {size['batch']}, "
                  f'{min(8, os.cpu_count() or 1)} workers, each batch copied to the device: '
                  + ', '.join(f'{v} {r:.0f} images/s' for v, r in rates.items()))


if __name__ == '__main__':
    main()
