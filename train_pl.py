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
    python train_pl.py --runs [PATTERN] [--sort val/acc]                  # the experiments in save/, newest first
    python train_pl.py --diff save/a save/b                               # config keys that differ, and metrics

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

from lightyaml.config.checking import attempt, build, check_kwargs, check_sections, check_spec, check_spec_list
from lightyaml.config.loading import Config, load_config, resolve_seed
from lightyaml.errors import ConfigError
from lightyaml.launch.cli import Plan, answer, exit_status, parse_command_line
from lightyaml.launch.console import progress_bar_wanted
from lightyaml.launch.devices import check_gpu_asked, parse_gpu_flag, select_cuda_devices
from lightyaml.launch.resolve import Evaluation, Run, check_single_run_flags, resolve_evaluation, resolve_run
from lightyaml.launch.runs import report_runs
from lightyaml.launch.search import plan_search
from lightyaml.launch.sweep import plan_sweep
from lightyaml.process import resume_gc
from lightyaml.registry import CALLBACKS, DATA_MODULES, LOGGERS, WRAPPERS
from lightyaml.run.experiment_dir import check_output_file
from lightyaml.run.results import (
    finish_run,
    predict_loader,
    prediction_columns,
    record_test,
    refuse_data_flag,
    run_classifies,
    served_stage,
    split_loader,
    write_own_curves,
    write_predictions,
)
from lightyaml.run.stopped import stopped_run
from lightyaml.run.stopping import StopSignals
from lightyaml.run.trackers import check_trackers_reachable

# Lightning, and the callbacks that import it, are imported inside the functions that use them:
# once the console is quiet (lightyaml/launch/console.py), and never for --list or --print-config.


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line into a plan and carry it out; returns the exit status (2: a
    configuration error, 1: a run that stopped on an error)."""
    plan = parse_command_line('train_pl.py', __doc__, argv)
    with exit_status(plan) as status:
        if plan.action == 'answer':
            print(answer(plan))
        elif plan.action == 'runs':   # --runs, --diff, --compare: read back from the experiment folders
            status.code = report_runs(plan)
        elif plan.action in ('sweep', 'search'):   # each run a process of this script
            runs = plan_search(plan) if plan.action == 'search' else plan_sweep(plan)
            for cfg in runs.configs:
                validate(cfg)
            status.code = runs.start()
        elif plan.action == 'evaluate':
            evaluation = resolve_evaluation(plan)
            validate(evaluation.cfg, training=False)
            with evaluation.held():
                evaluate(evaluation)
        elif plan.action == 'tune':
            print(tune(plan))
        else:
            train(resolve_run(plan))
    return status.code


def tune(plan: Plan) -> str:
    """--find-lr / --find-batch-size: Lightning's Tuner on --config and its overrides, in a
    throwaway folder (lightyaml/train/tuning.py); no experiment folder is created."""
    from callbacks.lazy_modules import LazyModules  # Lightning: see the note above `main`
    from lightyaml.train import tuning  # Lightning: see the note above `main`
    args = plan.args
    check_single_run_flags(args)
    if not args.config or args.resume:
        raise ConfigError('--find-lr and --find-batch-size tune a config: give --config (and overrides), '
                          'e.g. --config configs/digits.yaml')
    cfg = load_config(Path(args.config), args.overrides)
    check_gpu_asked(cfg, args.gpu)
    resolve_seed(cfg)
    validate(cfg)
    out = check_output_file(args.out, '--find-lr', Path(args.out)) if args.out else None
    finds = [name for name, asked in (('batch_size', args.find_batch_size), ('lr', args.find_lr)) if asked]
    params = device_params(cfg.get('trainer_params') or {}, args.gpu, args.nodes)
    return tuning.tune(cfg, params, finds, out, [LazyModules()])


# Trainer and ModelCheckpoint arguments lightyaml sets itself, and what to do instead.
TRAINER_OWN = {
    'callbacks': 'list callbacks in the top-level callbacks section',
    'logger': 'list loggers in the top-level loggers section (the folder keeps its metrics.csv and tb/ too)',
    'default_root_dir': 'runs go to save/<name>; choose the name with --name',
    'enable_checkpointing': 'checkpoints are configured in the checkpoint section',
}
CHECKPOINT_OWN = {'dirpath': 'checkpoints go to save/<name>/ckpt; choose the name with --name'}


def validate(cfg: Config, training: bool = True) -> None:
    """Every problem of the config, one line each, before anything is built or created (`training`:
    for training it; --test, --predict and --export read a run trained by train.py's `sharding` too)."""
    import pytorch_lightning as pl  # Lightning: see the note above `main`
    from pytorch_lightning.callbacks import ModelCheckpoint  # Lightning: see the note above `main`
    problems = check_sections(cfg)
    if 'train_wrapper' in cfg:
        check_spec(WRAPPERS, cfg['train_wrapper'], 'train_wrapper', cfg, problems, required=True)
    from lightyaml.train.fsdp import check_strategy  # Lightning: see the note above `main`
    trainer_params = cfg.get('trainer_params') or {}
    if isinstance(trainer_params, Mapping):   # a strategy given as a spec is checked against its own class
        check_strategy(cfg, trainer_params, problems)
        trainer_params = {k: v for k, v in trainer_params.items()
                          if not (k == 'strategy' and isinstance(v, Mapping))}
    check_kwargs(pl.Trainer, trainer_params, 'trainer_params', cfg, problems, 'pl.Trainer', refused=TRAINER_OWN)
    check_kwargs(ModelCheckpoint, cfg.get('checkpoint') or {}, 'checkpoint', cfg, problems,
                 'ModelCheckpoint', refused=CHECKPOINT_OWN)
    check_spec_list(CALLBACKS, cfg, 'callbacks', problems)
    check_spec_list(LOGGERS, cfg, 'loggers', problems)
    if training and cfg.get('sharding') is not None:
        problems.append(cfg.error('sharding', "train.py's sharded path (torch's fully_shard); train_pl.py shards "
                                              "through Lightning: trainer_params.strategy: {name: fsdp, args: "
                                              "{auto_wrap_policy: [...]}}, on CUDA GPUs"))
    from lightyaml.train.preflight import check_loop_values  # torch: not needed by --print-config
    problems += check_loop_values(cfg)
    if problems:
        raise ConfigError(*problems)
    check_trackers_reachable(cfg)   # a tracker server that does not answer: one line, before anything is created


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
    from pytorch_lightning.strategies import FSDPStrategy  # Lightning: see the note above `main`

    from callbacks.signal_stop import SignalStop, slurm_requeues  # Lightning: see the note above `main`
    from lightyaml.run.threads import decide_threads  # torch: see the note above `main`
    from lightyaml.train.lightning import lightning_data, lightning_first_steps  # Lightning: see the note above `main`
    cfg = run.cfg
    with run.exp.writing():
        validate(cfg)
        pl.seed_everything(cfg['seed'], workers=True, verbose=False)
        data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
        wrapper = build_wrapper(run)
        checkpoint = make_checkpoint(run)
        stop = StopSignals()   # SIGTERM, SIGINT, SIGHUP during fit: stop at the next batch, last.ckpt kept
        signal_stop = SignalStop(stop, run.exp, run.command)
        trainer, params = make_trainer(run, data, wrapper, [checkpoint, signal_stop, *make_callbacks(run)])
        stop.requeue = slurm_requeues(trainer)   # SIGUSR1 ours too: Lightning's handler is then never put in
        decide_threads(cfg, trainer.num_devices)   # once, before any step; recorded in config.yaml
        scale_lr(cfg, trainer, data)
        # Under torchrun or SLURM every process is already part of the job, and a throwaway Trainer
        # would join it: the preflight runs in single processes and in the one that launches DDP.
        launched = 'LOCAL_RANK' in os.environ or 'WORLD_SIZE' in os.environ
        # A plain data module's loaders are checked here; a LightningDataModule is set up by the preflight.
        if trainer.world_size == 1 and not isinstance(data, pl.LightningDataModule):
            build('the data loaders', 'data_module', cfg, lambda: data.train_dataloader())
        # Under FSDP the preflight's copy would need the whole model on one device, which FSDP is there to avoid.
        sharded = isinstance(trainer.strategy, FSDPStrategy)
        first_steps = None if launched or sharded else lightning_first_steps(cfg, data, wrapper, params)
        if run.dry_run:
            print(first_steps.report() if first_steps else 'dry run: the first steps are not run under FSDP (they '
                  'would need the whole model on one device); nothing was created' if sharded else
                  'dry run: skipped in a launched process')
            return {}
        with warnings.catch_warnings(), stopped_run(run.exp, cfg), stop.installed():
            if run.resume is not None:   # continuing in place: ckpt/ holds the run's checkpoints, as it should
                warnings.filterwarnings('ignore', message=r'Checkpoint directory .* exists and is not empty')
            try:
                trainer.fit(wrapper, datamodule=lightning_data(data), ckpt_path=run.resume, weights_only=True)
            except SystemExit:   # Lightning's SIGTERMException: SignalStop kept last.ckpt and wrote the line
                if signal_stop.stopped is None:
                    raise
                if trainer.is_global_zero:   # the loggers are closed now: the curves up to the stop
                    write_own_curves(run.exp)
                raise signal_stop.stopped from None
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero and not trainer.interrupted:
            best_score = None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
            finish_run(run.exp, metrics, checkpoint.monitor, best_score,
                       Path(checkpoint.best_model_path) if checkpoint.best_model_path else None)
        return metrics


def scale_lr(cfg: Any, trainer: Any, data: Any) -> None:
    """With the config's `scale_lr`: the learning rates scaled by the global batch over its base
    batch, when fitting starts (callbacks/scale_lr.py)."""
    from callbacks.scale_lr import ScaleLR  # Lightning: see the note above `main`
    from lightyaml.train.optim import batch_size_of, lr_scale  # torch: see the note above `main`
    factor = lr_scale(cfg, trainer.world_size, batch_size_of(cfg, data), trainer.accumulate_grad_batches)
    if factor is not None:
        trainer.callbacks.append(ScaleLR(factor))


def build_wrapper(run: Run) -> Any:
    """The training wrapper; with --init-from its weights, and with --resume checked against the checkpoint."""
    from lightyaml.run.checkpoint_files import check_resumable, load_weights  # torch
    wrapper = build('the training wrapper', 'train_wrapper', run.cfg, lambda: WRAPPERS.make(run.cfg['train_wrapper']))
    if run.init_from is not None:   # fine-tuning: the weights only; optimizer, schedule and counters start fresh
        load_weights(wrapper, run.init_from, prefixes=run.cfg.get('init_from'))
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


def make_trainer(run: Run, data: Any, wrapper: Any, callbacks: list[Any]) -> tuple[Any, dict]:
    """The Trainer of `trainer_params` with --gpu/--nodes, the folder's own logger first (`self.logger`
    in a LightningModule is it) and the config's `loggers`; and the parameters it got. A strategy
    given as a spec, and FSDP, are built here (their wrap policies name `wrapper`'s module classes)."""
    # Lightning, its callbacks and loggers: see the note above `main`.
    import pytorch_lightning as pl
    from lightning_fabric.plugins import CheckpointIO
    from pytorch_lightning.callbacks import ProgressBar

    from callbacks.progress_bar import ThrottledProgressBar
    from callbacks.tracker_logger import make_loggers
    from lightyaml.train.fsdp import make_strategy
    from lightyaml.train.lightning import AtomicCheckpointIO, ExperimentLogger
    params = make_strategy(run.cfg, device_params(run.cfg.get('trainer_params') or {}, run.gpu, run.nodes), wrapper)
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
    import pytorch_lightning as pl  # Lightning: see the note above `main`
    args, exp, cfg = target.args, target.exp, target.cfg
    wrapper, averaged = rebuilt_wrapper(target)
    if args.export:
        import torch  # torch: see the note above `main`

        from lightyaml.run.export import export_experiment  # onnx and friends: only for --export
        if not isinstance(getattr(wrapper, 'model', None), torch.nn.Module):
            raise ConfigError(f"--export: training wrapper {cfg['train_wrapper']['name']!r} has no single `model` "
                              f"to export")
        export_experiment(exp, cfg, wrapper.model, (target.ckpt, averaged), args.format, args.out)
        return
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    same_device = {k: v for k, v in (cfg.get('trainer_params') or {}).items() if k in ('accelerator', 'precision')}
    trainer = pl.Trainer(**{**device_params(same_device, args.gpu, None), 'devices': 1}, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    resume_gc()   # paused for start-up when run as a script
    if args.test:
        run_test(target, trainer, wrapper, data, averaged)
    else:
        run_predict(target, trainer, wrapper, data)


def rebuilt_wrapper(target: Evaluation) -> tuple[Any, bool]:
    """The training wrapper as training built it, from the run's config.yaml (`train_wrapper.args`,
    overrides applied), whether or not it saved its hyperparameters, with the checkpoint's weights
    loaded as Lightning's load_from_checkpoint loads them (its `configure_model` and
    `on_load_checkpoint` hooks first, then the state_dict, strictly); then the `ema` callback's
    average where validation used it. Returns the wrapper and whether it holds the EMA weights."""
    # torch: see the note above `main`
    from lightyaml.run.checkpoint_files import load_weights, read_checkpoint
    from lightyaml.train.ema import ema_target, ema_weights
    cfg, ckpt, flag = target.cfg, target.ckpt, f'--ckpt {target.args.ckpt}'
    name = cfg['train_wrapper']['name']
    wrapper = build(f'the training wrapper {name!r}', 'train_wrapper', cfg, lambda: WRAPPERS.make(cfg['train_wrapper']))
    state = read_checkpoint(ckpt, flag)

    def hooks() -> None:
        if callable(getattr(wrapper, 'configure_model', None)):
            wrapper.configure_model()   # a module that builds its layers there (idempotent, as Lightning asks)
        if callable(getattr(wrapper, 'on_load_checkpoint', None)):
            wrapper.on_load_checkpoint(state)   # it may rename or add keys of the state_dict
    build(f'the training wrapper {name!r} for {ckpt.name}', 'train_wrapper', cfg, hooks)
    load_weights(wrapper, ckpt, target.flag, state)
    averaged = ema_weights(state, target.args.ema, ckpt)
    if averaged is not None:   # the `ema` callback's average, as validation used it
        ema_target(wrapper).load_state_dict(averaged)
    return wrapper, averaged is not None


def run_test(target: Evaluation, trainer: Any, wrapper: Any, data: Any, averaged: bool) -> None:
    """--test: the test metrics of the checkpoint, printed and kept in test.yaml and log.txt."""
    # Lightning: see the note above `main`
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.model_helpers import is_overridden
    args, cfg = target.args, target.cfg
    flag = f'--test {args.test}'
    if not is_overridden('test_step', wrapper, pl.LightningModule):
        raise ConfigError(f"{flag}: training wrapper {cfg['train_wrapper']['name']!r} ({type(wrapper).__name__}) "
                          f"has no test_step(); add one that logs the test metrics (self.log('test/acc', ...))")
    if isinstance(data, pl.LightningDataModule):
        served_stage(data, 'test', cfg, flag, lambda method: is_overridden(method, data, pl.LightningDataModule))
        results = attempt('testing', 'train_wrapper', cfg, lambda: trainer.test(wrapper, datamodule=data,
                                                                                verbose=False))
    else:
        served_stage(data, 'test', cfg, flag)
        loader = split_loader(data, 'test', flag)
        results = attempt('testing', 'train_wrapper', cfg, lambda: trainer.test(wrapper, dataloaders=loader,
                                                                                verbose=False))
    if not results:
        raise ConfigError(f'{flag}: the test split gave no batches')
    record_test(target.exp, target.ckpt, results[0], ema=averaged)


def run_predict(target: Evaluation, trainer: Any, wrapper: Any, data: Any) -> None:
    """--predict: predictions.csv (or --out) from the data module's predict_dataloader(), its
    fallback (see `served_stage`), or for the default data module --data or its test split."""
    # Lightning: see the note above `main`
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.model_helpers import is_overridden
    args, exp, cfg = target.args, target.exp, target.cfg
    flag = f'--predict {args.predict}' + (f' --data {args.data}' if args.data else '')
    out = Path(args.out) if args.out else exp.path / 'predictions.csv'
    dataset = None
    if isinstance(data, pl.LightningDataModule):   # its own predict_dataloader decides what is predicted
        refuse_data_flag(data, cfg, args.data)
        stage = served_stage(data, 'predict', cfg, flag,
                             lambda method: is_overridden(method, data, pl.LightningDataModule))
        lightning_data_for(data, stage)
        outputs = attempt('predicting', 'train_wrapper', cfg, lambda: trainer.predict(wrapper, datamodule=data))
    else:
        loader, dataset = predict_loader(data, cfg, args.data, flag)
        outputs = attempt('predicting', 'train_wrapper', cfg, lambda: trainer.predict(wrapper, dataloaders=loader))
    classes = exp.read_classes()
    write_predictions(out, prediction_columns(outputs or [], flag), dataset, classes, run_classifies(cfg, classes))


def lightning_data_for(data: Any, stage: str) -> None:
    """A LightningDataModule whose `stage` loader ('test' or 'val') serves --predict: what
    Lightning asks of it for predicting (setup('predict'), predict_dataloader()) goes to that
    loader, set up as for testing or fitting."""
    if stage == 'predict':
        return
    setup, loader = data.setup, getattr(data, f'{stage}_dataloader')
    own_stage = 'test' if stage == 'test' else 'fit'   # 'fit' sets up the validation set in Lightning's examples

    def predict_setup(stage: str) -> None:
        setup(own_stage if stage == 'predict' else stage)
    data.setup, data.predict_dataloader = predict_setup, loader


if __name__ == '__main__':
    status = main()
    skip_collections_at_exit(status)
    sys.exit(status)
