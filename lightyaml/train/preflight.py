"""Preflight: every problem the first training and validation step would hit, found before the
experiment folder exists, and the `--dry-run` report of what those steps saw.

Lightning-free. train.py runs its Task through `task_first_steps`; train_pl.py runs its wrapper
through a throwaway Trainer (lightyaml/train/lightning.py) and uses the rest: the value rules of the loop
both entry points share, RNG isolation, the monitor check and the report. Both run on a deep copy
of the model with the Python, NumPy and torch generator states restored afterwards, so a run
ends bit-identical to one without the preflight. An exception maps to the config key it comes
from through lightyaml.config.checking.blame.
"""
from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from lightyaml.built_specs import copy_specs, spec_of
from lightyaml.config.checking import attempt
from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError, did_you_mean
from lightyaml.run.checkpoint_files import rng_state, set_rng_state
from lightyaml.train.lazy import to_device
from lightyaml.train.optim import step_scheduler
from lightyaml.train.precision import StepPrecision

# Values of the loop's arguments that both entry points refuse alike (train.py runs the loop
# itself, so it must refuse what Lightning refuses, with the same words): key -> (rule, wanted).
LOOP_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'trainer_params.max_epochs': (lambda v: v >= -1, 'an integer >= -1 (-1: no limit)'),
    'trainer_params.max_steps': (lambda v: v >= -1, 'an integer >= -1 (-1: no limit)'),
    'trainer_params.accumulate_grad_batches': (lambda v: v >= 1, 'an integer >= 1'),
    'trainer_params.log_every_n_steps': (lambda v: v >= 1, 'an integer >= 1'),
    'trainer_params.check_val_every_n_epoch': (lambda v: v >= 1, 'an integer >= 1 (or null: never validate)'),
    'trainer_params.limit_train_batches': (lambda v: v >= 0 and (isinstance(v, int) or v <= 1),
                                           'a number of batches >= 0 or a fraction from 0.0 to 1.0'),
    'trainer_params.limit_val_batches': (lambda v: v >= 0 and (isinstance(v, int) or v <= 1),
                                         'a number of batches >= 0 or a fraction from 0.0 to 1.0'),
    'trainer_params.gradient_clip_val': (lambda v: v >= 0, 'a number >= 0'),
    'checkpoint.save_top_k': (lambda v: v >= -1, 'an integer >= -1 (-1: keep all)'),
    'checkpoint.every_n_epochs': (lambda v: v >= 0, 'an integer >= 0'),
}


def check_loop_values(cfg: Config) -> list[str]:
    """Problems with the values of LOOP_RULES (their types are checked against the signatures)."""
    problems = []
    for key, (rule, wanted) in LOOP_RULES.items():
        section, _, name = key.partition('.')
        value = (cfg.get(section) or {}).get(name) if isinstance(cfg.get(section) or {}, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not rule(value):
            problems.append(cfg.error(key, f'expected {wanted}, got {value!r}'))
    params = cfg.get('trainer_params')
    devices = params.get('devices', 'auto') if isinstance(params, Mapping) else 'auto'
    if not valid_devices(devices):
        problems.append(cfg.error('trainer_params.devices', f"expected 'auto', a number of devices >= 1 (-1: "
                                                            f"all), or a list of device indices such as [0, 1], "
                                                            f"got {devices!r}"))
    return problems


def valid_devices(devices: Any) -> bool:
    """Whether `trainer_params.devices` has a form both entry points read (Lightning's): 'auto', a
    count (an int or its string; -1: all), or device indices (a list, or a string '0,1')."""
    if isinstance(devices, str):
        devices = devices.strip()
        if devices == 'auto' or re.fullmatch(r'-1|[1-9]\d*', devices):
            return True
        return bool(re.fullmatch(r'\d+(,\d+)*,?', devices))
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    return (isinstance(devices, (list, tuple)) and len(devices) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in devices))


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Whatever runs inside draws from the generators; afterwards they are as they were."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def describe(value: Any) -> str:
    """Shapes and dtypes: `image (32, 1, 8, 8) float32, label (32,) int64`."""
    if isinstance(value, torch.Tensor):
        shape = f"({', '.join(map(str, value.shape))}{',' if value.dim() == 1 else ''})"
        scalar = f' = {value.item():.4f}' if value.numel() == 1 and value.is_floating_point() else ''
        return f"{shape} {str(value.dtype).removeprefix('torch.')}{scalar}"
    if isinstance(value, Mapping):
        return ', '.join(f'{k} {describe(v)}' for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return '[' + '; '.join(describe(v) for v in value) + ']'
    return type(value).__name__


class FirstSteps:
    """What the first batches looked like: the batch, each model's output and each loss's terms
    (forward hooks on the modules the registries built), and the names logged."""

    def __init__(self) -> None:
        self.batch: Optional[str] = None
        self.outputs: dict[str, str] = {}
        self.sizes: dict[str, tuple[Mapping, int]] = {}   # model -> (its spec, its output's last size)
        self.terms: dict[str, str] = {}
        self.logged: list[str] = []

    def watch(self, root: nn.Module) -> None:
        """Record the first output of every model and loss inside `root` (a copy: the hooks die with it)."""
        for module in root.modules():
            found = spec_of(module)
            if found and found[0] in ('model', 'loss'):
                module.register_forward_hook(partial(self._record, found, f"{found[0]} {found[1]['name']!r}"))

    def see_batch(self, batch: Any) -> None:
        """Record the first training batch."""
        if self.batch is None:
            self.batch = describe(batch)

    def _record(self, found: tuple[str, Mapping], label: str, module: nn.Module, inputs: Any, output: Any) -> None:
        (self.outputs if found[0] == 'model' else self.terms).setdefault(label, describe(output))
        if found[0] == 'model' and isinstance(output, torch.Tensor) and output.ndim >= 2:
            self.sizes.setdefault(label, (found[1], output.shape[-1]))

    def detail(self) -> str:
        """What was seen so far, for an error line: ` (batch: ...; model 'mlp' -> ...)`."""
        seen = ([f'batch: {self.batch}'] if self.batch else []) + [f'{k} -> {v}' for k, v in self.outputs.items()]
        return f" ({'; '.join(seen)})" if seen else ''

    def report(self) -> str:
        """The --dry-run report."""
        lines = ['dry run: built everything and ran one training and one validation batch; nothing was created',
                 f'  batch: {self.batch}']
        lines += [f'  prediction of {k}: {v}' for k, v in self.outputs.items()]
        lines += [f'  loss terms of {k}: {v}' for k, v in self.terms.items()]
        lines.append(f"  logged: {', '.join(self.logged) or '(nothing)'}")
        return '\n'.join(lines)


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy whose parts remember the specs they were built from, as the originals do."""
    memo: dict[int, Any] = {}
    duplicate = copy.deepcopy(module, memo)
    copy_specs(memo)
    for part in duplicate.modules():   # `Module.compile()` keeps a compiled bound method of the
        if getattr(part, '_compiled_call_impl', None) is not None:   # original: the copy runs eagerly
            part._compiled_call_impl = None
    return duplicate


def first_batch(loader: Any) -> Any:
    """The first batch of a loader. A DataLoader with workers is read through a twin without
    them, so that no worker pool is started (and no random seed drawn) for it."""
    from torch.utils.data import DataLoader  # torch: not needed by --list/--print-config
    if isinstance(loader, DataLoader) and loader.num_workers > 0:
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                            collate_fn=loader.collate_fn, drop_last=loader.drop_last)
    return next(iter(loader))


def check_monitors(cfg: Config, logged: Iterable[str]) -> None:
    """Every `monitor` key in the config (checkpoint, schedulers, callbacks) names a logged metric.
    A step value `x_step` counts as logged when `x` is (it is logged every log_every_n_steps)."""
    logged = sorted(set(logged) - {'epoch', 'step'})
    problems = []
    for key, name in _monitors(cfg):
        if name in logged or (name.endswith('_step') and name.removesuffix('_step') in logged):
            continue
        problems.append(cfg.error(key, f'{name!r} is never logged{did_you_mean(name, logged)}; '
                                       f"logged: {', '.join(logged) or '(nothing)'}"))
    if problems:
        raise ConfigError(*problems)


def _monitors(node: Any, prefix: str = '') -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f'{prefix}.{k}' if prefix else str(k)
            if k == 'monitor' and isinstance(v, str):
                yield key, v
            yield from _monitors(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _monitors(v, f'{prefix}.{i}')


def task_first_steps(cfg: Config, task: Any, train_set: tuple[Any, int], val_sets: Mapping[str, tuple[Any, int]],
                     precision: StepPrecision) -> FirstSteps:
    """train.py's preflight: on a copy of the task, one training step (forward, loss, backward,
    optimizer step), one batch of each validation set and a scheduler step; then the monitors are
    checked. Raises a ConfigError naming the key of whatever failed; the generators are left as
    they were. `train_set`: (loader, batches to use); `val_sets`: {'val' or 'val/<name>': the same}."""
    seen = FirstSteps()
    with isolated_rng(), torch.compiler.set_stance('force_eager'):   # no compiling a throwaway copy
        task = copy_module(task)
        seen.watch(task)
        optimizers = attempt('building the optimizer and scheduler', 'train_wrapper.args.optim_spec', cfg,
                             task.configure_optimizers) or {'optimizer': None}
        optimizer, scheduler = optimizers['optimizer'], optimizers.get('lr_scheduler')
        metrics: dict[str, float] = {}

        def run(stage: str, loader: Any) -> None:
            what = 'training' if stage == 'train' else 'validation'
            batch = attempt(f'loading the first {what} batch', 'data_module', cfg,
                            lambda: precision.batch(to_device(first_batch(loader), precision.device)))
            seen.see_batch(batch)

            def step() -> None:
                task.train(stage == 'train')
                with torch.set_grad_enabled(stage == 'train' and optimizer is not None), precision.forward():
                    terms = task.step(batch, stage)[1]
                if stage == 'train' and optimizer is not None:
                    terms['loss'].backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            attempt(f'the first {what} step', 'train_wrapper', cfg, step, seen.detail, seen.sizes)
            metrics.update(task.epoch_metrics(stage))

        if train_set[1] > 0:
            run('train', train_set[0])
        for stage, (loader, n_batches) in val_sets.items():
            if n_batches > 0:
                run(stage, loader)
        if scheduler is not None:
            monitor = scheduler.get('monitor')
            if monitor is None or monitor in metrics:
                attempt('stepping the scheduler', 'train_wrapper.args.scheduler_spec', cfg, lambda: step_scheduler(
                    scheduler['scheduler'], None if monitor is None else metrics[monitor]))
    seen.logged = sorted(metrics)
    check_monitors(cfg, metrics)
    return seen
