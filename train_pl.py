"""Train with PyTorch Lightning from a YAML config.

    python train_pl.py --config configs/digits.yaml                       # default device
    python train_pl.py --config configs/digits.yaml --gpu 1,2 --name exp  # CUDA 1 and 2, DDP
    python train_pl.py --config configs/digits.yaml trainer_params.max_epochs=3
    python train_pl.py --resume save/exp trainer_params.max_epochs=40     # continue a run
    python train_pl.py --list models                                      # what is registered
    python train_pl.py --config configs/digits.yaml --print-config        # the merged config, and where each key came from
    python train_pl.py --test save/exp [--ckpt best|last|PATH]            # evaluate on the test split
    python train_pl.py --predict save/exp --data load/my_images/          # predictions.csv
    python train_pl.py --export save/exp --format onnx                    # save/exp/export/model.onnx, checked
    python train_pl.py --config configs/digits.yaml --sweep train_wrapper.args.optim_spec.args.lr=1e-3,3e-4 \
        --seeds 0,1,2                                                     # a grid, mean +- std over seeds
    python train_pl.py --config configs/digits.yaml --name lrs --search configs/digits-search.yaml \
        --workers 2 [--storage postgresql://...] [--launcher slurm]     # an Optuna search
    python train_pl.py --config configs/digits.yaml --name exp --auto-resume  # start, or continue if there
    python train_pl.py --plot save/a save/b --out ab.png                  # curves of several runs

The run goes to save/<name>/: config.yaml, src/, log.txt, metrics.csv, tb/, ckpt/; the config's
`loggers` (MLflow, W&B, ...) get the same metrics.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from lightyaml.process import pause_gc_for_start_up, set_thread_defaults, skip_collections_at_exit

set_thread_defaults()   # before anything imports torch, which reads them once: see utils.py
if __name__ == '__main__':
    pause_gc_for_start_up()   # until training starts: a third of the import time (utils.py)

from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.results import finish_run, predict_spec, record_test, split_loader, write_predictions
from lightyaml.config.checking import attempt, build, check_kwargs, check_sections, check_spec, check_spec_list
from lightyaml.launch.cli import (parse_gpu_flag, resolve_run, run_cli, run_evaluation,
                         select_cuda_devices, stopped_run)
from lightyaml.launch.console import progress_bar_wanted
from lightyaml.config.loading import Config
from lightyaml.launch.trial import ValidationHook, validation_hook
from lightyaml.errors import ConfigError, NonFiniteLossError, display_path
from lightyaml.process import resume_gc
from lightyaml.registry import CALLBACKS, DATA_MODULES, LOGGERS, WRAPPERS

# Trainer and ModelCheckpoint arguments lightyaml sets itself, and what to do instead.
TRAINER_OWN = {
    'callbacks': 'list callbacks in the top-level callbacks section',
    'logger': 'list loggers in the top-level loggers section (the folder keeps its metrics.csv and tb/ too)',
    'default_root_dir': 'runs go to save/<name>; choose the name with --name',
    'enable_checkpointing': 'checkpoints are configured in the checkpoint section',
}
CHECKPOINT_OWN = {'dirpath': 'checkpoints go to save/<name>/ckpt; choose the name with --name'}


def validate(cfg: Config) -> None:
    """Every problem of the config, one line each, before anything is built or created."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    problems = check_sections(cfg)
    if 'train_wrapper' in cfg:
        check_spec(WRAPPERS, cfg['train_wrapper'], 'train_wrapper', cfg, problems, required=True)
    check_kwargs(pl.Trainer, cfg.get('trainer_params') or {}, 'trainer_params', cfg, problems,
                 'pl.Trainer', refused=TRAINER_OWN)
    check_kwargs(ModelCheckpoint, cfg.get('checkpoint') or {}, 'checkpoint', cfg, problems,
                 'ModelCheckpoint', refused=CHECKPOINT_OWN)
    check_spec_list(CALLBACKS, cfg, 'callbacks', problems)
    check_spec_list(LOGGERS, cfg, 'loggers', problems)
    from lightyaml.train.preflight import check_loop_values   # torch: not needed by --print-config
    problems += check_loop_values(cfg)
    if problems:
        raise ConfigError(*problems)


def device_params(trainer_params: Mapping, gpu: Optional[str], nodes: Optional[int]) -> dict:
    """trainer_params with --gpu and --nodes applied: `--gpu 1,2` -> 2 GPUs with DDP."""
    params = dict(trainer_params)
    if nodes:
        params['num_nodes'] = nodes
    if gpu is None:
        return params
    devices = parse_gpu_flag(gpu)
    if devices == 'cpu':
        params['accelerator'] = 'cpu'
        return params
    params.update(accelerator='gpu', devices=select_cuda_devices(devices))
    if params['devices'] > 1 or params.get('num_nodes', 1) > 1:
        params.setdefault('strategy', 'ddp')
    return params


def train(cfg: Config, exp: ExperimentDir, command: Sequence[str], resume_ckpt: Optional[Path] = None,
          overwrite: bool = False, gpu: Optional[str] = None, nodes: Optional[int] = None,
          init_from: Optional[Path] = None, restart: bool = False,
          on_validation: Optional[ValidationHook] = None, dry_run: bool = False) -> dict[str, float]:
    """Validate the config, build everything, check one training and validation step (the
    preflight; `dry_run` stops after it), fit, and return the final logged metrics; the
    experiment folder's lock is released when it ends, however it ends.
    `restart`: the folder exists without a checkpoint and starts again in place;
    `on_validation(epoch, metrics)`: called after each validation, True stops the run."""
    with exp.writing():
        return fit(cfg, exp, command, resume_ckpt, overwrite, gpu, nodes, init_from, restart, on_validation,
                   dry_run)


def fit(cfg: Config, exp: ExperimentDir, command: Sequence[str], resume_ckpt: Optional[Path], overwrite: bool,
        gpu: Optional[str], nodes: Optional[int], init_from: Optional[Path], restart: bool = False,
        on_validation: Optional[ValidationHook] = None, dry_run: bool = False) -> dict[str, float]:
    """What `train` does: validate, build the data, wrapper, callbacks and Trainer, and fit."""
    validate(cfg)
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

    from lightning_fabric.plugins import CheckpointIO

    from lightyaml.train.lightning import AtomicCheckpointIO
    from callbacks.base_logger import BaseLogger, ExperimentLogger
    from lightyaml.run.checkpoint_files import check_resumable, load_weights
    from callbacks.fast_paths import FastPaths
    from callbacks.last_checkpoint import LastCheckpoint
    from callbacks.lazy_modules import LazyModules
    from callbacks.progress_bar import ThrottledProgressBar
    from callbacks.tracker_logger import make_loggers
    from callbacks.validation_hook import ValidationHook as ValidationCallback

    pl.seed_everything(cfg['seed'], workers=True, verbose=False)
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    wrapper = build('the training wrapper', 'train_wrapper', cfg, lambda: WRAPPERS.make(cfg['train_wrapper']))
    if init_from is not None:   # fine-tuning: the weights only; optimizer, schedule and counters start fresh
        load_weights(wrapper, init_from)
    if resume_ckpt is not None:   # a checkpoint of another model fails here, before the folder is touched
        check_resumable(wrapper, resume_ckpt)
    # `save_last` (default on) is served by LastCheckpoint, which refreshes last.ckpt every epoch.
    checkpoint_args = {'save_last': True, **(cfg.get('checkpoint') or {})}
    save_last = checkpoint_args.pop('save_last')
    checkpoint = build('ModelCheckpoint', 'checkpoint', cfg, lambda: ModelCheckpoint(dirpath=exp.ckpt_dir,
                                                                                   **checkpoint_args))
    callbacks = [BaseLogger(exp, cfg, command, resume=resume_ckpt is not None or restart, overwrite=overwrite),
                 checkpoint, FastPaths(), LazyModules()]
    if save_last:
        callbacks.append(LastCheckpoint(exp.ckpt_dir))
    if on_validation is not None:
        callbacks.append(ValidationCallback(on_validation))
    for i, spec in enumerate(cfg.get('callbacks') or []):
        callbacks.append(build(f"callback {spec['name']!r}", f'callbacks.{i}', cfg, lambda: CALLBACKS.make(spec)))
    params = device_params(cfg.get('trainer_params') or {}, gpu, nodes)
    own_bar = any(isinstance(c, ProgressBar) for c in callbacks)   # a configured bar is an explicit choice
    params['enable_progress_bar'] = progress_bar_wanted(params.get('enable_progress_bar', True if own_bar else None),
                                                        sys.stdout)   # Lightning's bar draws on stdout
    if params['enable_progress_bar'] and not own_bar:
        callbacks.append(ThrottledProgressBar())   # Lightning's own redraws after every step
    if not isinstance(data, pl.LightningDataModule):
        params.setdefault('use_distributed_sampler', False)   # the data module shards the data itself
    # The folder's own logger first: `self.logger` in a LightningModule is it, the trackers follow.
    loggers = [ExperimentLogger(exp), *make_loggers(cfg, exp, resume=resume_ckpt is not None)]
    plugins = params.pop('plugins', None) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())   # checkpoints written beside their destination, not in $TMPDIR
    trainer = build('pl.Trainer', 'trainer_params', cfg, lambda: pl.Trainer(
        **params, plugins=plugins, logger=loggers, callbacks=callbacks, default_root_dir=exp.path))
    # Under torchrun or SLURM every process is already part of the job, and a throwaway Trainer
    # would join it: the preflight runs in single processes and in the one that launches DDP.
    launched = 'LOCAL_RANK' in os.environ or 'WORLD_SIZE' in os.environ
    if trainer.world_size == 1 and not isinstance(data, pl.LightningDataModule):   # (a LightningDataModule
        build('the data loaders', 'data_module', cfg, lambda: data.train_dataloader())   # is set up by the preflight)
    first_steps = None if launched else preflight(cfg, data, wrapper, params)
    if dry_run:
        print(first_steps.report() if first_steps else 'dry run: skipped in a launched process')
        return {}
    with warnings.catch_warnings(), stopped_run(exp, cfg):
        if resume_ckpt is not None:   # continuing in place: ckpt/ holds the run's checkpoints, as it should
            warnings.filterwarnings('ignore', message=r'Checkpoint directory .* exists and is not empty')
        trainer.fit(wrapper, datamodule=lightning_data(data), ckpt_path=resume_ckpt, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero and not trainer.interrupted:
        best_score = None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
        finish_run(exp, metrics, checkpoint.monitor, best_score,
                   Path(checkpoint.best_model_path) if checkpoint.best_model_path else None)
    return metrics


# The Trainer arguments a preflight step keeps: how a step computes. The loop's own (epochs,
# limits, devices, strategy) are the preflight's.
PREFLIGHT_KEEPS = ('accelerator', 'precision', 'deterministic', 'benchmark', 'inference_mode', 'detect_anomaly',
                   'gradient_clip_val', 'gradient_clip_algorithm', 'log_every_n_steps', 'use_distributed_sampler')


def preflight(cfg: Config, data: Any, wrapper: Any, params: Mapping) -> Any:
    """One training and one validation batch of a copy of the wrapper through a throwaway Trainer
    (its logger and root in a temporary folder, no checkpoints, no callbacks of the run, one device), then
    every `monitor` checked against what was logged. Any wrapper works, since Lightning itself
    runs its hooks; a LightningDataModule gets prepare_data() and setup('fit') from it. The
    generators are restored afterwards. About 0.1 s on digits."""
    import pytorch_lightning as pl

    from callbacks.base_logger import ExperimentLogger
    from lightyaml.train.preflight import FirstSteps, check_monitors, copy_module, isolated_rng
    from lightyaml.train.optim import UnloggedMonitor
    seen = FirstSteps()
    phase = ['building the optimizer and scheduler']   # where an error happened, in train.py's words

    class Phases(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            phase[0] = 'loading the first training batch'
            scratch.started = True   # after Lightning's setup asked for `experiment`: made only when used

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            seen.see_batch(batch)
            phase[0] = 'the first training step'

        def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            phase[0] = 'loading the first validation batch'

        def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            phase[0] = 'the first validation step'

        def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            phase[0] = 'stepping the scheduler'

    class ScratchLogger(ExperimentLogger):   # writes only what the module itself asks for (images, samples)
        def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
            pass

    loggers = [logging.getLogger(n) for n in ('pytorch_lightning', 'lightning_fabric', 'lightning.pytorch')]
    levels = [logger.level for logger in loggers]
    with isolated_rng(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as root:
        warnings.simplefilter('ignore')   # the run itself warns about what matters, once
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        copy = copy_module(wrapper)
        seen.watch(copy)
        scratch = ExperimentDir(root)   # the module's own logging (images, samples) goes here
        step_scheduler = copy.lr_scheduler_step

        def lr_scheduler_step(*args: Any) -> None:   # Lightning calls it between two callback hooks
            phase[0] = 'stepping the scheduler'
            step_scheduler(*args)
            phase[0] = 'the first training step'
        copy.lr_scheduler_step = lr_scheduler_step
        trainer = pl.Trainer(**{k: v for k, v in params.items() if k in PREFLIGHT_KEEPS}, devices=1, max_epochs=1,
                             limit_train_batches=1, limit_val_batches=0 if params.get('limit_val_batches') == 0 else 1,
                             num_sanity_val_steps=0, callbacks=[Phases()],
                             logger=ScratchLogger(scratch),
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=root)

        def fit() -> None:
            # A monitor is reported below with its config key; a NaN loss by the run itself.
            try:
                trainer.fit(copy, datamodule=lightning_data(data))
            except UnloggedMonitor:
                pass
            except NonFiniteLossError:
                phase[0] = 'non-finite'
        try:
            attempt(lambda: phase[0], 'train_wrapper', cfg, fit,
                    lambda: seen.detail() if phase[0].startswith('the first') else '', seen.sizes)
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
    seen.logged = sorted(set(trainer.callback_metrics) - {'epoch', 'step'})
    if phase[0] != 'non-finite':   # the epoch stopped early: not everything was logged
        check_monitors(cfg, trainer.callback_metrics)
    return seen


def evaluate_checkpoint(args: argparse.Namespace, exp: ExperimentDir, cfg: Config, ckpt: Path) -> None:
    """What --test, --predict or --export does with the checkpoint `resolve_evaluation` found."""
    import pytorch_lightning as pl
    import torch

    from lightyaml.run.checkpoint_files import read_checkpoint
    from lightyaml.train.ema import ema_target, ema_weights
    name = cfg['train_wrapper']['name']
    wrapper = build(f'training wrapper {name!r} from {ckpt.name}', 'train_wrapper', cfg, lambda: WRAPPERS.get(
        name).load_from_checkpoint(ckpt, map_location='cpu', weights_only=True))
    averaged = ema_weights(read_checkpoint(ckpt, f'--ckpt {args.ckpt}'), args.ema, ckpt)
    if averaged is not None:   # the `ema` callback's average, as validation used it
        ema_target(wrapper).load_state_dict(averaged)
    if args.export:
        from lightyaml.run.export import export_experiment
        if not isinstance(getattr(wrapper, 'model', None), torch.nn.Module):
            raise ConfigError(f"--export: training wrapper {name!r} has no single `model` to export")
        export_experiment(exp, cfg, ckpt, wrapper.model, args.format, args.out, averaged is not None)
        return
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    same_device = {k: v for k, v in (cfg.get('trainer_params') or {}).items() if k in ('accelerator', 'precision')}
    trainer = pl.Trainer(**{**device_params(same_device, args.gpu, None), 'devices': 1}, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    resume_gc()   # paused for start-up when run as a script
    if args.test:
        if isinstance(data, pl.LightningDataModule):
            results = trainer.test(wrapper, datamodule=data, verbose=False)
        else:
            results = trainer.test(wrapper, dataloaders=split_loader(data, 'test', f'--test {args.test}'), verbose=False)
        if not results:
            raise ConfigError(f'--test {args.test}: the test split gave no batches')
        record_test(exp, ckpt, results[0], ema=averaged is not None)
        return
    out = Path(args.out) if args.out else exp.path / 'predictions.csv'
    if isinstance(data, pl.LightningDataModule):   # its own predict_dataloader decides what is predicted
        if args.data is not None:
            raise ConfigError(f"--data: data module {cfg['data_module']['name']!r} is a LightningDataModule; "
                              f"its predict_dataloader() gives the data (leave out --data)")
        outputs = trainer.predict(wrapper, datamodule=data)
        write_predictions(out, torch.cat(outputs), None)
        return
    if not hasattr(data, 'specs'):
        raise ConfigError('--predict: works with the default data module (data_module.name: default) '
                          'or a LightningDataModule')
    data.specs['predict'] = predict_spec(args.data, cfg)
    loader = split_loader(data, 'predict', f'--predict {args.predict}' + (f' --data {args.data}' if args.data else ''))
    outputs = trainer.predict(wrapper, dataloaders=loader)
    write_predictions(out, torch.cat(outputs), data.dataset('predict'), exp.read_classes())


def lightning_data(data: Any) -> Any:
    """A LightningDataModule as it is; a plain data module behind Lightning's hooks, so that each
    DDP process makes its loaders (and its share of the data) after the process group is up."""
    import pytorch_lightning as pl
    if isinstance(data, pl.LightningDataModule):
        return data

    class PlainDataModule(pl.LightningDataModule):
        val_names = getattr(data, 'val_names', None)   # the base wrapper's names of several val sets

        def train_dataloader(self) -> Any:
            return data.train_dataloader()

        def val_dataloader(self) -> Any:
            return data.val_dataloader() or []

        def test_dataloader(self) -> Any:
            return data.test_dataloader() or []

        def predict_dataloader(self) -> Any:
            return data.predict_dataloader() or []

    return PlainDataModule()


def run(args: argparse.Namespace, command: list[str]) -> None:
    """What `main` does once the command line is parsed."""
    if args.test or args.predict or args.export:
        return run_evaluation(args, validate, evaluate_checkpoint)
    resolved = resolve_run(args)
    if resolved.finished:
        print(f'{display_path(resolved.exp.path)} has finished (result.yaml); nothing to do')
        return
    train(resolved.cfg, resolved.exp, command, resolved.resume, args.overwrite, args.gpu, args.nodes,
          resolved.init_from, resolved.restart, validation_hook(resolved.exp), args.dry_run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for a configuration error)."""
    return run_cli(run, 'train_pl.py', __doc__, argv, validate)


if __name__ == '__main__':
    status = main()
    skip_collections_at_exit()
    sys.exit(status)
