"""--find-lr and --find-batch-size: Lightning's Tuner (`lr_find`, `scale_batch_size`) on a run's
config, for train_pl.py. The Tuner trains a copy of the run for a few steps in a throwaway folder
(its temporary checkpoints included) on one device; what it finds is printed with the config key
that sets it, and no experiment folder is created.
"""
from __future__ import annotations

import inspect
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner

from lightyaml.config.checking import build
from lightyaml.errors import ConfigError, display_path
from lightyaml.registry import DATA_MODULES, WRAPPERS
from lightyaml.run.threads import decide_threads
from lightyaml.train.lightning import PREFLIGHT_KEEPS, lightning_data

# The Trainer arguments a tuning run keeps: how a step computes (the loop and devices are its own).
TUNING_KEEPS = (*PREFLIGHT_KEEPS, 'accumulate_grad_batches')


def tune(cfg: Any, trainer_params: Mapping, finds: Sequence[str], out: Optional[Path], callbacks: list[Any]) -> str:
    """What the Tuner finds for this config (`finds`: 'batch_size', 'lr'), one line each: the
    largest batch that fits first (the rate depends on it), then the suggested learning rate with
    its curve written to `out`. `callbacks`: those every run has that a step needs (lazy modules)."""
    pl.seed_everything(cfg['seed'], workers=True, verbose=False)
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    wrapper = build('the training wrapper', 'train_wrapper', cfg, lambda: WRAPPERS.make(cfg['train_wrapper']))
    decide_threads(cfg)
    lines = []
    with tempfile.TemporaryDirectory(prefix='lightyaml-tune-') as folder:
        params = {k: v for k, v in trainer_params.items() if k in TUNING_KEEPS}
        trainer = pl.Trainer(**params, devices=1, max_epochs=-1, default_root_dir=folder, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=callbacks)
        datamodule = lightning_data(data)
        if 'batch_size' in finds:
            lines.append(_largest_batch(Tuner(trainer), wrapper, datamodule, cfg))
        if 'lr' in finds:
            lines.append(_learning_rate(Tuner(trainer), wrapper, datamodule, cfg, out or Path('lr_find.png')))
    return '\n'.join(lines)


def _largest_batch(tuner: Tuner, wrapper: Any, datamodule: Any, cfg: Any) -> str:
    try:
        size = tuner.scale_batch_size(wrapper, datamodule=datamodule, mode='power')
    except Exception as e:   # Lightning's MisconfigurationException: no batch_size to scale
        if 'batch_size' not in str(e):
            raise
        raise ConfigError(f"--find-batch-size: neither the data module {cfg['data_module']['name']!r} nor the "
                          f'training wrapper has a batch_size attribute to scale') from None
    key = ('data_module.args.batch_size' if 'batch_size' in (cfg['data_module'].get('args') or {})
           or _takes(DATA_MODULES, cfg['data_module'], 'batch_size') else "the data module's batch_size")
    return (f'--find-batch-size: the largest batch per process that fits: {size} (powers of two, until one '
            f'fails, reaches the training set\'s size or 8192); set it with {key}={size}')


def _learning_rate(tuner: Tuner, wrapper: Any, datamodule: Any, cfg: Any, out: Path) -> str:
    finder = tuner.lr_find(wrapper, datamodule=datamodule, update_attr=False)
    suggestion = finder.suggestion()
    figure = finder.plot(suggest=suggestion is not None)
    figure.savefig(out)
    curve = f'curve: {display_path(out)}'
    if suggestion is None:
        return f'--find-lr: no suggestion (the loss did not fall steadily over the rates tried); {curve}'
    return (f"--find-lr: suggested learning rate {suggestion:.3g} (the steepest fall of the loss over "
            f"{len(finder.results['lr'])} rates from {finder.lr_min:g} to {finder.lr_max:g}); set it with "
            f'{_lr_key(cfg)}={suggestion:.3g}; {curve}')


def _lr_key(cfg: Any) -> str:
    """The config key that sets the learning rate: the base wrapper's optimizer's, else a wrapper
    argument named lr or learning_rate."""
    spec = cfg['train_wrapper']
    if spec['name'] == 'base':
        return 'train_wrapper.args.optim_spec.args.lr'
    name = next((n for n in ('lr', 'learning_rate') if _takes(WRAPPERS, spec, n)), None)
    return f'train_wrapper.args.{name}' if name else "the learning rate your module's configure_optimizers uses"


def _takes(registry: Any, spec: Mapping, name: str) -> bool:
    try:
        return name in inspect.signature(registry.get(spec['name'])).parameters
    except (TypeError, ValueError):
        return False
