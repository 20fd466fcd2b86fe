"""Optimizers and schedulers from specs, and the one rule for stepping a scheduler.

Used alike by train.py, the `base` wrapper (through Task) and the `gan` wrapper. Lightning-free.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from lightyaml.errors import ConfigError, did_you_mean
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
