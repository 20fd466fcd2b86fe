"""Train with PyTorch Lightning from a YAML config.

    python train_pl.py --config configs/digits.yaml                       # default device
    python train_pl.py --config configs/digits.yaml --gpu 1,2 --name exp  # CUDA 1 and 2, DDP
    python train_pl.py --config configs/digits.yaml trainer_params.max_epochs=3
    python train_pl.py --resume save/exp trainer_params.max_epochs=40     # continue a run
    python train_pl.py --list models                                      # what is registered
    python train_pl.py --config configs/digits.yaml --print-config        # the merged config, each key's origin
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

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from lightyaml.launch.console import survive_closed_consoles
from lightyaml.process import pause_gc_for_start_up, set_cache_defaults, set_thread_defaults, skip_collections_at_exit

survive_closed_consoles()   # a closed pipe or terminal never stops a run (lightyaml/launch/console.py)
set_thread_defaults()   # before anything imports torch, which reads them once: see lightyaml/process.py
set_cache_defaults()   # matplotlib's cache where HOME is unset or unwritable (another user, a container)
if __name__ == '__main__':
    pause_gc_for_start_up()   # until training starts: a third of the import time (lightyaml/process.py)

from lightyaml.config.checking import build, check_kwargs, check_sections, check_spec, check_spec_list
from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError
from lightyaml.launch.cli import answer, exit_status, parse_command_line
from lightyaml.launch.console import progress_bar_wanted
from lightyaml.launch.devices import parse_gpu_flag, select_cuda_devices
from lightyaml.launch.resolve import Evaluation, Run, resolve_evaluation, resolve_run
from lightyaml.launch.search import plan_search
from lightyaml.launch.sweep import plan_sweep
from lightyaml.process import resume_gc
from lightyaml.registry import CALLBACKS, DATA_MODULES, LOGGERS, WRAPPERS
from lightyaml.run.results import finish_run, predict_spec, record_test, split_loader, write_predictions
from lightyaml.run.stopped import stopped_run

# Lightning, and the callbacks that import it, are imported inside the functions that use them:
# once the console is quiet (lightyaml/launch/console.py), and never for --list or --print-config.


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line into a plan and carry it out; returns the exit status (2: a
    configuration error, 1: a run that stopped on an error)."""
    plan = parse_command_line('train_pl.py', __doc__, argv)
    with exit_status(plan) as status:
        if plan.action == 'answer':
            print(answer(plan))
        elif plan.action in ('sweep', 'search'):   # each run a process of this script
            runs = plan_search(plan) if plan.action == 'search' else plan_sweep(plan)
            for cfg in runs.configs:
                validate(cfg)
            status.code = runs.start()
        elif plan.action == 'evaluate':
            evaluation = resolve_evaluation(plan)
            validate(evaluation.cfg)
            with evaluation.held():
                evaluate(evaluation)
        else:
            train(resolve_run(plan))
    return status.code


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
    import pytorch_lightning as pl  # Lightning: see the note above `main`
    from pytorch_lightning.callbacks import ModelCheckpoint  # Lightning: see the note above `main`
    problems = check_sections(cfg)
    if 'train_wrapper' in cfg:
        check_spec(WRAPPERS, cfg['train_wrapper'], 'train_wrapper', cfg, problems, required=True)
    check_kwargs(pl.Trainer, cfg.get('trainer_params') or {}, 'trainer_params', cfg, problems,
                 'pl.Trainer', refused=TRAINER_OWN)
    check_kwargs(ModelCheckpoint, cfg.get('checkpoint') or {}, 'checkpoint', cfg, problems,
                 'ModelCheckpoint', refused=CHECKPOINT_OWN)
    check_spec_list(CALLBACKS, cfg, 'callbacks', problems)
    check_spec_list(LOGGERS, cfg, 'loggers', problems)
    from lightyaml.train.preflight import check_loop_values  # torch: not needed by --print-config
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


def train(run: Run) -> dict[str, float]:
    """Validate the config, build the data, wrapper, callbacks and Trainer, check one training and
    validation step (the preflight; --dry-run stops after it), fit, and return the final logged
    metrics. The experiment folder's lock is released when it ends, however it ends."""
    import pytorch_lightning as pl  # Lightning: see the note above `main`

    from lightyaml.train.lightning import lightning_data, lightning_first_steps  # Lightning: see the note above `main`
    cfg = run.cfg
    with run.exp.writing():
        validate(cfg)
        pl.seed_everything(cfg['seed'], workers=True, verbose=False)
        data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
        wrapper = build_wrapper(run)
        checkpoint = make_checkpoint(run)
        trainer, params = make_trainer(run, data, [checkpoint, *make_callbacks(run)])
        # Under torchrun or SLURM every process is already part of the job, and a throwaway Trainer
        # would join it: the preflight runs in single processes and in the one that launches DDP.
        launched = 'LOCAL_RANK' in os.environ or 'WORLD_SIZE' in os.environ
        # A plain data module's loaders are checked here; a LightningDataModule is set up by the preflight.
        if trainer.world_size == 1 and not isinstance(data, pl.LightningDataModule):
            build('the data loaders', 'data_module', cfg, lambda: data.train_dataloader())
        first_steps = None if launched else lightning_first_steps(cfg, data, wrapper, params)
        if run.dry_run:
            print(first_steps.report() if first_steps else 'dry run: skipped in a launched process')
            return {}
        with warnings.catch_warnings(), stopped_run(run.exp, cfg):
            if run.resume is not None:   # continuing in place: ckpt/ holds the run's checkpoints, as it should
                warnings.filterwarnings('ignore', message=r'Checkpoint directory .* exists and is not empty')
            trainer.fit(wrapper, datamodule=lightning_data(data), ckpt_path=run.resume, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero and not trainer.interrupted:
            best_score = None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
            finish_run(run.exp, metrics, checkpoint.monitor, best_score,
                       Path(checkpoint.best_model_path) if checkpoint.best_model_path else None)
        return metrics


def build_wrapper(run: Run) -> Any:
    """The training wrapper; with --init-from its weights, and with --resume checked against the checkpoint."""
    from lightyaml.run.checkpoint_files import check_resumable, load_weights  # torch
    wrapper = build('the training wrapper', 'train_wrapper', run.cfg, lambda: WRAPPERS.make(run.cfg['train_wrapper']))
    if run.init_from is not None:   # fine-tuning: the weights only; optimizer, schedule and counters start fresh
        load_weights(wrapper, run.init_from)
    if run.resume is not None:   # a checkpoint of another model fails here, before the folder is touched
        check_resumable(wrapper, run.resume, cfg=run.cfg)
    return wrapper


def make_checkpoint(run: Run) -> Any:
    """ModelCheckpoint from the `checkpoint` section, into save/<name>/ckpt. Its `save_last`
    (default on) is served by the LastCheckpoint callback, which refreshes last.ckpt every epoch."""
    from pytorch_lightning.callbacks import ModelCheckpoint  # Lightning: see the note above `main`
    checkpoint_args = {k: v for k, v in (run.cfg.get('checkpoint') or {}).items() if k != 'save_last'}
    return build('ModelCheckpoint', 'checkpoint', run.cfg, lambda: ModelCheckpoint(dirpath=run.exp.ckpt_dir,
                                                                                   **checkpoint_args))


def make_callbacks(run: Run) -> list[Any]:
    """The callbacks every run has (the folder and its log, fast paths, lazy modules, last.ckpt, a
    search trial's pruner), then the config's `callbacks`."""
    # Lightning callbacks: see the note above `main`.
    from callbacks.base_logger import BaseLogger
    from callbacks.fast_paths import FastPaths
    from callbacks.last_checkpoint import LastCheckpoint
    from callbacks.lazy_modules import LazyModules
    from callbacks.validation_hook import ValidationHook
    cfg = run.cfg
    callbacks = [BaseLogger(run.exp, cfg, run.command, resume=run.resume is not None or run.restart,
                            overwrite=run.overwrite), FastPaths(), LazyModules()]
    if (cfg.get('checkpoint') or {}).get('save_last', True):
        callbacks.append(LastCheckpoint(run.exp.ckpt_dir))
    if run.on_validation is not None:
        callbacks.append(ValidationHook(run.on_validation))
    for i, spec in enumerate(cfg.get('callbacks') or []):
        callbacks.append(build(f"callback {spec['name']!r}", f'callbacks.{i}', cfg, lambda: CALLBACKS.make(spec)))  # noqa: B023 (build calls it at once)
    return callbacks


def make_trainer(run: Run, data: Any, callbacks: list[Any]) -> tuple[Any, dict]:
    """The Trainer of `trainer_params` with --gpu/--nodes, the folder's own logger first (`self.logger`
    in a LightningModule is it) and the config's `loggers`; and the parameters it got."""
    # Lightning, its callbacks and loggers: see the note above `main`.
    import pytorch_lightning as pl
    from lightning_fabric.plugins import CheckpointIO
    from pytorch_lightning.callbacks import ProgressBar

    from callbacks.progress_bar import ThrottledProgressBar
    from callbacks.tracker_logger import make_loggers
    from lightyaml.train.lightning import AtomicCheckpointIO, ExperimentLogger
    params = device_params(run.cfg.get('trainer_params') or {}, run.gpu, run.nodes)
    own_bar = any(isinstance(c, ProgressBar) for c in callbacks)   # a configured bar is an explicit choice
    params['enable_progress_bar'] = progress_bar_wanted(params.get('enable_progress_bar', True if own_bar else None),
                                                        sys.stdout)   # Lightning's bar draws on stdout
    if params['enable_progress_bar'] and not own_bar:
        callbacks.append(ThrottledProgressBar())   # Lightning's own redraws after every step
    if not isinstance(data, pl.LightningDataModule):
        params.setdefault('use_distributed_sampler', False)   # the data module shards the data itself
    loggers = [ExperimentLogger(run.exp), *make_loggers(run.cfg, run.exp, resume=run.resume is not None)]
    plugins = params.pop('plugins', None) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())   # checkpoints written beside their destination, not in $TMPDIR
    trainer = build('pl.Trainer', 'trainer_params', run.cfg, lambda: pl.Trainer(
        **params, plugins=plugins, logger=loggers, callbacks=callbacks, default_root_dir=run.exp.path))
    return trainer, params


def evaluate(target: Evaluation) -> None:
    """What --test, --predict or --export does with the checkpoint `resolve_evaluation` found."""
    # Lightning and torch: see the note above `main`.
    import pytorch_lightning as pl
    import torch

    from lightyaml.run.checkpoint_files import read_checkpoint
    from lightyaml.train.ema import ema_target, ema_weights
    args, exp, cfg, ckpt = target.args, target.exp, target.cfg, target.ckpt
    name = cfg['train_wrapper']['name']
    wrapper = build(f'training wrapper {name!r} from {ckpt.name}', 'train_wrapper', cfg, lambda: WRAPPERS.get(
        name).load_from_checkpoint(ckpt, map_location='cpu', weights_only=True))
    averaged = ema_weights(read_checkpoint(ckpt, f'--ckpt {args.ckpt}'), args.ema, ckpt)
    if averaged is not None:   # the `ema` callback's average, as validation used it
        ema_target(wrapper).load_state_dict(averaged)
    if args.export:
        from lightyaml.run.export import export_experiment  # onnx and friends: only for --export
        if not isinstance(getattr(wrapper, 'model', None), torch.nn.Module):
            raise ConfigError(f"--export: training wrapper {name!r} has no single `model` to export")
        export_experiment(exp, cfg, wrapper.model, (ckpt, averaged is not None), args.format, args.out)
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
            loader = split_loader(data, 'test', f'--test {args.test}')
            results = trainer.test(wrapper, dataloaders=loader, verbose=False)
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


if __name__ == '__main__':
    status = main()
    skip_collections_at_exit()
    sys.exit(status)
