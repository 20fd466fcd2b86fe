"""Optimizers and schedulers from specs, and the one rule for stepping a scheduler.

Used alike by train.py, the `base` wrapper (through Task) and the `gan` wrapper. Lightning-free.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from lightyaml.errors import ConfigError, did_you_mean
from lightyaml.process import global_rank_from_env
from lightyaml.registry import OPTIMIZERS, SCHEDULERS


def make_optimizer(spec: Mapping, params: Any) -> Any:
    """An optimizer from `torch.optim` by name: `{name: AdamW, args: {lr: 1e-3}}`."""
    return OPTIMIZERS.make(spec, args={'params': params})


def make_scheduler(spec: Optional[Mapping], optimizer: Any) -> Optional[dict]:
    """A Lightning-style scheduler config from `{name, args, interval, frequency, monitor, warmup}`.

    `warmup: N` ramps the learning rate linearly over the first N intervals, then hands over to
    the named scheduler (torch's LinearLR + SequentialLR).
    """
    if not spec:
        return None

    scheduler = SCHEDULERS.make(spec, args={'optimizer': optimizer})
    warmup = spec.get('warmup') or 0
    if warmup:
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
        # Rebuild the main scheduler after the ramp so both start from the configured learning rate.
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr']
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [ramp, SCHEDULERS.make(spec, args={'optimizer': optimizer})], milestones=[warmup])
    config = {'scheduler': scheduler, 'interval': spec.get('interval', 'epoch'),
              'frequency': spec.get('frequency', 1)}
    if spec.get('monitor'):
        config['monitor'] = spec['monitor']
    return config


class UnloggedMonitor(ConfigError):
    """A scheduler's `monitor` names a metric that was not logged when the scheduler stepped."""


def monitored_value(monitor: str, metrics: Mapping[str, Any], when: str) -> float:
    """The value a ReduceLROnPlateau scheduler steps with; a metric that was not logged is a
    ConfigError naming it and what was logged, never a silent skip."""
    if monitor in metrics:
        return float(metrics[monitor])
    logged = sorted(k for k in metrics if not k.endswith('_step') and k not in ('epoch', 'step'))
    raise UnloggedMonitor(f'scheduler_spec.monitor: {monitor!r} was not logged by the end of {when}'
                      f'{did_you_mean(monitor, logged)}; logged: {", ".join(logged) or "(nothing)"} '
                      f'(with check_val_every_n_epoch above 1, monitor a train/ metric or validate every epoch)')


def step_scheduler(scheduler: Any, value: Optional[float] = None) -> None:
    """Step one scheduler, with the monitored value for ReduceLROnPlateau."""
    if value is None:
        scheduler.step()
    else:
        scheduler.step(value)


def step_schedulers(configs: Sequence[Optional[Mapping]], interval: str, count: int,
                    metrics: Mapping[str, Any]) -> None:
    """The one rule for stepping schedulers, in train.py, the `base` wrapper and the `gan` wrapper.

    Steps each config of this `interval` ('epoch' or 'step') whose `frequency` divides `count`
    (epochs or optimizer steps done, from 1); one with a `monitor` steps with that metric's value
    (`monitored_value`). Lightning decides the moment for the `base` wrapper and calls its
    `lr_scheduler_step`, which steps through `step_scheduler` after the same monitor check.
    """
    for config in configs:
        if config and config['interval'] == interval and count % config['frequency'] == 0:
            monitor = config.get('monitor')
            step_scheduler(config['scheduler'],
                           None if monitor is None else monitored_value(monitor, metrics, f'{interval} {count}'))


# What the learning-rate scale multiplies: in each parameter group, and in a scheduler.
LR_GROUP_KEYS = ('lr', 'initial_lr', 'max_lr', 'min_lr')    # (max_lr, min_lr: OneCycleLR's)
LR_SCHEDULER_ATTRIBUTES = ('base_lrs', 'max_lrs', '_last_lr')   # (max_lrs: CyclicLR's)


def batch_size_of(cfg: Mapping, data: Any) -> Optional[int]:
    """The batch size per process: `data_module.args.batch_size`, else the data module's own
    `batch_size` (or `hparams.batch_size`); None where neither says."""
    given = (cfg['data_module'].get('args') or {}).get('batch_size')
    if given is None:
        given = getattr(data, 'batch_size', None) or (getattr(data, 'hparams', None) or {}).get('batch_size')
    return given if isinstance(given, int) and not isinstance(given, bool) else None


def lr_scale(cfg: Any, world_size: int, batch_size: Optional[int], accumulate: int) -> Optional[float]:
    """The config's `scale_lr: {base_batch: B}` factor, global batch / B (the linear scaling rule of
    Goyal et al., mmengine's auto_scale_lr), where the global batch is processes x batch size x
    accumulated batches; recorded as `scale_lr.factor` (config.yaml shows it) and printed once.
    None without the section."""
    section = cfg.get('scale_lr')
    if section is None:
        return None
    if batch_size is None:
        raise ConfigError(cfg.error('scale_lr', 'cannot tell the batch size per process to scale the learning '
                                                'rate by; give data_module.args.batch_size'))
    global_batch = world_size * batch_size * accumulate
    section['factor'] = factor = global_batch / section['base_batch']
    if global_rank_from_env() == 0:
        print(f"scale_lr: learning rates x{factor:g}: a global batch of {global_batch} ({world_size} x batch "
              f"{batch_size} x {accumulate}: processes x batch size x accumulated) over base_batch "
              f"{section['base_batch']}")
    return factor


def scale_learning_rates(optimizers: Sequence[Any], schedulers: Sequence[Any], factor: float) -> None:
    """Multiply every learning rate of `optimizers` and of their `schedulers` by `factor`, before
    the first step (a resumed run's saved states, already scaled, are loaded over them)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for key in LR_GROUP_KEYS:
                if isinstance(group.get(key), (int, float)):
                    group[key] *= factor
    for scheduler in schedulers:
        for name in LR_SCHEDULER_ATTRIBUTES:
            values = getattr(scheduler, name, None)
            if isinstance(values, list):
                setattr(scheduler, name, [v * factor for v in values])
