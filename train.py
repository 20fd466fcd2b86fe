"""Train without Lightning: the same configs, registries and experiment folder as train_pl.py.

    python train.py --config configs/digits.yaml --name exp               # one device
    python train.py --config configs/digits.yaml --gpu 1,2                # CUDA 1 and 2, one process each (DDP)
    torchrun --standalone --nproc_per_node=2 train.py --config configs/digits.yaml \\
        trainer_params.accelerator=cpu                                   # 2 CPU processes, gloo
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 train.py --config ...                 # several machines
    python train.py --resume save/exp trainer_params.max_epochs=40        # continue a run
    python train.py --test save/exp                                       # evaluate the best checkpoint
    python train.py --export save/exp --format onnx                       # save/exp/export/model.onnx, checked
    python train.py --config configs/digits.yaml --search configs/digits-search.yaml   # an Optuna search

The config's `loggers` may name MLFlowLogger and WandbLogger (logged through their own clients);
other Lightning loggers need train_pl.py.

It trains what the `base` wrapper trains (lightyaml/train/task.py) with a loop you can read and step
through. It never imports Lightning, yet its checkpoints use Lightning's layout, so weights move
freely between the two entry points.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from lightyaml.process import pause_gc_for_start_up, set_thread_defaults, skip_collections_at_exit

if __name__ == '__main__' and {'--print-config', '--list'} & set(sys.argv):
    # These need only the config files and the registries' names: answer before importing torch.
    from lightyaml.launch.cli import run_cli
    sys.exit(run_cli(None, 'train.py', __doc__))

set_thread_defaults()   # before anything imports torch, which reads them once: see utils.py
if __name__ == '__main__':
    pause_gc_for_start_up()   # until training starts: a third of the import time (utils.py)

import torch  # noqa: E402 (the imports below are after these calls too)

from lightyaml.run.checkpoint_files import (TopK, check_resumable, load_weights, save_checkpoint, seed_everything,
                                        set_rng_state)
from lightyaml.run.core_share import CoreShare
from lightyaml.run.experiment_dir import ExperimentDir
from lightyaml.run.folder_lock import HELD_BY_LAUNCHER
from lightyaml.run.metrics_files import MetricsWriter, format_epoch_line, model_summary
from lightyaml.run.results import finish_run, predict_spec, record_test, split_loader, write_predictions
from lightyaml.run.sample_grid import write_prediction_grid
from lightyaml.run.trackers import TrackedRuns, make_tracked_runs
from lightyaml.config.checking import attempt, build, check_kwargs, check_sections, check_spec_list
from lightyaml.launch.cli import (parse_gpu_flag, resolve_run, run_cli, run_evaluation,
                         select_cuda_devices, stopped_run)
from lightyaml.launch.console import progress_bar_wanted
from lightyaml.config.loading import Config
from lightyaml.launch.trial import ValidationHook, validation_hook
from lightyaml.train.preflight import check_loop_values, task_first_steps
from lightyaml.train.ema import EMA, STATE_KEY, EMAParams, ema_target, ema_weights
from lightyaml.train.lazy import materialize
from lightyaml.train.optim import step_schedulers
from lightyaml.train.task import val_stages
from lightyaml.errors import ConfigError, display_path
from lightyaml.process import keep_freed_memory, resume_gc
from lightyaml.registry import DATA_MODULES, TRACKERS


@dataclass
class TrainerParams:
    """The `trainer_params` train.py honours, with Lightning's meaning and defaults.

    Any other key is refused by name: nothing is silently ignored.
    """
    max_epochs: Optional[int] = None          # Lightning's default: 1000 when max_steps is not set either
    max_steps: int = -1
    check_val_every_n_epoch: Optional[int] = 1
    limit_train_batches: Union[int, float, None] = None   # an int counts batches, a float is a fraction
    limit_val_batches: Union[int, float, None] = None
    gradient_clip_val: Union[int, float, None] = None
    accumulate_grad_batches: int = 1
    precision: Literal[32, '32', '32-true', '16-mixed', 'bf16-mixed'] = '32-true'
    accelerator: Literal['auto', 'cpu', 'gpu', 'cuda'] = 'auto'
    devices: Union[int, str, list[int]] = 'auto'   # more than one: one process each (as --gpu does)
    deterministic: Optional[bool] = None
    log_every_n_steps: int = 50
    enable_progress_bar: Optional[bool] = None   # default: only when stderr, where it draws, is a terminal
    enable_model_summary: bool = True         # print the model's modules at the start


@dataclass
class CheckpointParams:
    """The `checkpoint` keys train.py honours, with ModelCheckpoint's meaning and defaults."""
    monitor: Optional[str] = None
    mode: Literal['min', 'max'] = 'min'
    save_top_k: int = 1
    save_last: Optional[bool] = True
    every_n_epochs: Optional[int] = None
    filename: Optional[str] = None


def validate(cfg: Config) -> None:
    """Every problem of the config for train.py, one line each, before anything is built."""
    from lightyaml.train.task import Task
    problems = check_sections(cfg)
    wrapper = cfg.get('train_wrapper')
    if wrapper is not None and not isinstance(wrapper, Mapping):
        problems.append(cfg.error('train_wrapper', f"expected {{name: base, args: {{...}}}}, got {wrapper!r}"))
    elif isinstance(wrapper, Mapping) and wrapper.get('name') != 'base':
        problems.append(cfg.error('train_wrapper.name', f"train.py runs the 'base' wrapper only, not "
                                                        f"{wrapper.get('name')!r}; use train_pl.py for it"))
    elif isinstance(wrapper, Mapping):
        check_kwargs(Task, wrapper.get('args') or {}, 'train_wrapper.args', cfg, problems, "wrapper 'base'",
                     required=True)
    check_kwargs(TrainerParams, cfg.get('trainer_params') or {}, 'trainer_params', cfg, problems,
                 'train.py (use train_pl.py for other Trainer arguments)')
    check_kwargs(CheckpointParams, cfg.get('checkpoint') or {}, 'checkpoint', cfg, problems,
                 'train.py (use train_pl.py for other ModelCheckpoint arguments)')
    callbacks = cfg.get('callbacks') or []
    if not isinstance(callbacks, list):
        problems.append(cfg.error('callbacks', f'expected a list of callback specs, got {type(callbacks).__name__}'))
        callbacks = []
    # The `ema` callback is the one with a Lightning-free twin (lightyaml/train/ema.py); the others need Lightning.
    names = [spec.get('name') if isinstance(spec, Mapping) else spec for spec in callbacks]
    for i, name in enumerate(names):
        if name != 'ema':
            problems.append(cfg.error(f'callbacks.{i}', f"train.py runs only the 'ema' callback, not {name!r}; "
                                                        f"use train_pl.py for Lightning callbacks"))
        elif names.index('ema') != i:
            problems.append(cfg.error(f'callbacks.{i}', "a second 'ema' callback; keep one"))
        elif not isinstance(callbacks[i], Mapping) or set(callbacks[i]) - {'name', 'args'}:
            problems.append(cfg.error(f'callbacks.{i}', f"expected {{name: ema, args: {{...}}}}, got {callbacks[i]!r}"))
        else:
            before = len(problems)
            check_kwargs(EMAParams, callbacks[i].get('args') or {}, f'callbacks.{i}.args', cfg, problems,
                         "callback 'ema'")
            if len(problems) == before:   # well-typed: now the ranges (decay between 0 and 1, ...)
                try:
                    ema_params(cfg)
                except ConfigError as e:
                    problems += e.problems
    check_loggers(cfg, problems)
    if is_lightning_data_module(cfg.get('data_module')):
        problems.append(cfg.error('data_module.name', f"{cfg['data_module']['name']!r} is a LightningDataModule, "
                                                      f"whose setup() Lightning calls; use train_pl.py for it"))
    problems += check_loop_values(cfg)
    if problems:
        raise ConfigError(*problems)


def ema_params(cfg: Config) -> Optional[EMAParams]:
    """The arguments of the config's `ema` callback, or None without one."""
    for i, spec in enumerate(cfg.get('callbacks') or []):
        if isinstance(spec, Mapping) and spec.get('name') == 'ema':
            return build("callback 'ema'", f'callbacks.{i}', cfg, lambda: EMAParams(**spec.get('args') or {}))
    return None


def check_loggers(cfg: Config, problems: list[str]) -> None:
    """train.py logs to MLflow and W&B by their own clients; any other logger is refused by name."""
    specs = cfg.get('loggers') or []
    known = TRACKERS.names()
    refused = [cfg.error(f'loggers.{i}.name', f"train.py logs to {' and '.join(known)} only, not {spec['name']!r}; "
                                              f"use train_pl.py for other loggers")
               for i, spec in enumerate(specs if isinstance(specs, list) else [])
               if isinstance(spec, Mapping) and isinstance(spec.get('name'), str) and spec['name'] not in known]
    if refused:
        problems.extend(refused)
    else:
        check_spec_list(TRACKERS, cfg, 'loggers', problems)


def is_lightning_data_module(spec: Any) -> bool:
    """Whether a data module spec names a LightningDataModule (told by its class names, so that
    this check itself never imports Lightning)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get('name'), str) or spec['name'] not in DATA_MODULES.names():
        return False
    return any(base.__name__ == 'LightningDataModule' for base in DATA_MODULES.get(spec['name']).__mro__)


# ----------------------------------------------------------------------------- devices and processes

def requested_processes(params: TrainerParams, gpu: Optional[str]) -> tuple[str, int]:
    """('cuda' or 'cpu', how many processes) from --gpu, else trainer_params.accelerator/devices."""
    if gpu is not None:
        devices = parse_gpu_flag(gpu)
        return ('cpu', 1) if devices == 'cpu' else ('cuda', select_cuda_devices(devices))
    wants_cuda = params.accelerator in ('gpu', 'cuda') or (params.accelerator == 'auto' and torch.cuda.is_available())
    if params.accelerator in ('gpu', 'cuda') and not torch.cuda.is_available():
        raise ConfigError(f"trainer_params.accelerator: {params.accelerator!r} but no CUDA device is available; "
                          f"use accelerator: cpu")
    devices = params.devices
    count = len(devices) if isinstance(devices, list) else 1 if devices == 'auto' else int(devices)
    if isinstance(devices, list) and wants_cuda:
        select_cuda_devices(devices)
    return ('cuda' if wants_cuda else 'cpu'), count


def launch_processes(nproc: int, argv: Sequence[str]) -> None:
    """Run this script in `nproc` processes through torch.distributed's own launcher (what
    torchrun uses), one per device; a process that fails ends the others and this call."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend='c10d', rdzv_endpoint='localhost:0', max_restarts=0, monitor_interval=0.5)
    elastic_launch(config, sys.executable)(os.path.abspath(__file__), *argv)


def setup_process(device_type: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); under torchrun (or our launcher) joins the process group."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device('cuda', local_rank) if device_type == 'cuda' else torch.device('cpu')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1:
        import torch.distributed as dist
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        return device, dist.get_rank(), world_size
    return device, 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity when there is one)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def autocast_and_scaler(precision: Any, device: torch.device) -> tuple[Any, Optional[torch.amp.GradScaler]]:
    """An autocast context and, for float16, a gradient scaler (Lightning's `precision` meanings)."""
    if str(precision) in ('32', '32-true'):
        return contextlib.nullcontext(), None
    dtype = torch.float16 if precision == '16-mixed' else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


# ------------------------------------------------------------------------------------------- training

def limit(n_batches: int, value: Union[int, float, None]) -> int:
    """Lightning's limit_*_batches: an int is a count, a float a fraction of the loader."""
    if value is None:
        return n_batches
    return min(n_batches, value if isinstance(value, int) else int(n_batches * value))


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to `device`."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate(task: Any, loader: Any, n_batches: int, stage: str, device: torch.device, autocast: Any) -> dict:
    """Loss terms and metrics of `stage` over the first `n_batches` batches, across processes."""
    task.eval()
    with torch.no_grad(), autocast:
        for batch_idx, batch in enumerate(loader):
            if batch_idx >= n_batches:
                break
            task.step(to_device(batch, device), stage)
    task.train()
    return task.epoch_metrics(stage, all_reduce_sum)


def build_task(cfg: Config) -> Any:
    """The `base` wrapper's Task from `train_wrapper.args` (Lightning-free)."""
    from lightyaml.train.task import Task
    return build("the 'base' wrapper", 'train_wrapper', cfg, lambda: Task(**cfg['train_wrapper'].get('args', {})))


@dataclass
class Resumed:
    """Where a resumed run continues: counters, time already spent, and train.py's top-k state."""
    start_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    top_k: Optional[dict] = None
    ema: Optional[dict] = None


def restore(path: Path, task: Any, optimizer: Any, scheduler: Optional[dict], scaler: Any,
            device: torch.device) -> Resumed:
    """Weights, optimizer, scheduler, scaler, counters and generator states from a checkpoint;
    optimizer and scheduler arguments the config now gives differently replace the saved ones."""
    state = torch.load(path, map_location=device, weights_only=True)
    task.load_state_dict(state['state_dict'])
    if optimizer is not None:
        optimizer.load_state_dict(state['optimizer_states'][0])
    if scheduler and state['lr_schedulers']:
        scheduler['scheduler'].load_state_dict(state['lr_schedulers'][0])
    if scaler is not None and 'MixedPrecision' in state:
        scaler.load_state_dict(state['MixedPrecision'])
    for change in task.apply_changed_specs(optimizer, scheduler, state['hyper_parameters']) if optimizer else ():
        print(f'resume: {change} (from the config)')
    set_rng_state(state['callbacks']['LastCheckpoint']['rng'])   # the next shuffle and dropout masks
    return Resumed(state['epoch'] + 1, state['global_step'], state['callbacks'].get('BaseLogger', {}).get('elapsed', 0.0),
                   state['callbacks'].get('TopK', {}), state['callbacks'].get(STATE_KEY))


def train(cfg: Config, exp: ExperimentDir, command: Sequence[str], resume_ckpt: Optional[Path] = None,
          overwrite: bool = False, gpu: Optional[str] = None, init_from: Optional[Path] = None,
          restart: bool = False, on_validation: Optional[ValidationHook] = None,
          dry_run: bool = False) -> dict[str, float]:
    """Validate, build, check one training and validation step (the preflight), train; returns the
    last epoch's metrics (on every process); `dry_run` stops after the preflight. The experiment
    folder's lock is released when it ends, however it ends.
    `restart`: the folder exists without a checkpoint and starts again in place;
    `on_validation(epoch, metrics)`: called after each validation, True stops the run."""
    with exp.writing():
        validate(cfg)
        params = TrainerParams(**(cfg.get('trainer_params') or {}))
        ckpt_params = CheckpointParams(**(cfg.get('checkpoint') or {}))
        device_type, nproc = requested_processes(params, gpu)
        if nproc > 1 and 'WORLD_SIZE' not in os.environ:
            if exp.locked:   # this launcher writes nothing itself; its rank 0 does, under this lock
                os.environ[HELD_BY_LAUNCHER] = str(exp.path.resolve())
            try:
                launch_processes(nproc, command[2:])   # each process runs this function again, under the launcher
            finally:
                os.environ.pop(HELD_BY_LAUNCHER, None)
            return {}
        device, rank, world_size = setup_process(device_type)
        trackers = make_tracked_runs(cfg.get('loggers') or [], TRACKERS.get, exp, cfg, resume_ckpt is not None)
        cores = CoreShare(device.type == 'cpu', processes=int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
        status = 'failed'
        try:
            with stopped_run(exp, cfg):   # an error once under way: one line, the checkpoint to resume from
                metrics = train_process(cfg, exp, command, params, ckpt_params, device, rank, world_size, resume_ckpt,
                                        overwrite, init_from, trackers, restart, on_validation, cores, dry_run)
            status = 'success'
            return metrics
        finally:
            cores.stop()
            trackers.finish(status)
            if world_size > 1:
                torch.distributed.destroy_process_group()


def train_process(cfg: Config, exp: ExperimentDir, command: Sequence[str], params: TrainerParams,
                  ckpt_params: CheckpointParams, device: torch.device, rank: int, world_size: int,
                  resume_ckpt: Optional[Path], overwrite: bool, init_from: Optional[Path],
                  trackers: TrackedRuns, restart: bool, on_validation: Optional[ValidationHook],
                  cores: CoreShare, dry_run: bool = False) -> dict[str, float]:
    """One process's training: set-up, resume, the loop, the end of the run."""
    # --- set-up: seeds, data, task, optimizer ------------------------------------------------------
    master = rank == 0   # only global rank 0 writes files
    if world_size > 1:   # a seed drawn because the config has none: every process takes rank 0's
        seed = torch.tensor([cfg['seed']], device=device)
        torch.distributed.broadcast(seed, src=0)
        cfg['seed'] = int(seed.item())
    if params.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg['seed'])
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    task = build_task(cfg)
    if init_from is not None:   # fine-tuning: the weights only; optimizer, schedule and counters start fresh
        load_weights(task, init_from)
    task.to(device)
    train_loader = build('the data loaders', 'data_module', cfg, lambda: data.train_dataloader())
    val_loaders = data.val_dataloader() or []   # one loader, or one per named validation set
    val_loaders = val_loaders if isinstance(val_loaders, list) else [val_loaders]
    # Lazy modules take their shapes from the first batch.
    attempt('the first training step', 'train_wrapper', cfg, lambda: materialize(task, train_loader))
    # A model (and loss) without trainable parameters is evaluated and checkpointed as it is.
    optimizers = attempt('building the optimizer and scheduler', 'train_wrapper.args.optim_spec', cfg,
                         task.configure_optimizers) or {'optimizer': None}
    optimizer, scheduler = optimizers['optimizer'], optimizers.get('lr_scheduler')
    # What the training step calls: the model alone (Task.forward minus a module call), or under
    # DDP the wrapper around the whole task, which averages gradients inside backward().
    step_module = (task.model if world_size == 1 or optimizer is None else torch.nn.parallel.DistributedDataParallel(
        task, device_ids=[device.index] if device.index is not None else None))
    autocast, scaler = autocast_and_scaler(params.precision, device)
    n_train = limit(len(train_loader), params.limit_train_batches)
    val_sets = {stage: (loader, limit(len(loader), params.limit_val_batches)) for stage, loader in
                zip(val_stages(getattr(data, 'val_names', None), len(val_loaders)), val_loaders)}
    # The preflight: the first training and validation step on a copy, before anything is created.
    first_steps = task_first_steps(cfg, task, train_loader, n_train, val_sets, device, autocast)
    if dry_run:
        if master:
            print(first_steps.report())
        return {}

    # --- resume: weights, optimizer, scheduler and counters from the checkpoint ---------------------
    if resume_ckpt:   # a checkpoint of another model fails here, before the folder is touched
        check_resumable(task, resume_ckpt)
    resumed = restore(resume_ckpt, task, optimizer, scheduler, scaler, device) if resume_ckpt else Resumed()
    step = resumed.step

    # --- the moving average of the weights (the `ema` callback), continued on resume ---------------
    ema_args = ema_params(cfg)
    ema = EMA(ema_target(task), ema_args) if ema_args is not None else None   # averages task.model
    if ema is not None and resumed.ema:
        ema.load_state_dict(resumed.ema)

    # --- the experiment folder ----------------------------------------------------------------------
    writer = top_k = None
    if master:
        exp.start(cfg, command, resume=resume_ckpt is not None or restart, overwrite=overwrite)
        trackers.start()   # their runs begin now, not inside the first epoch's time
        exp.log(model_summary(task))
        exp.write_classes(getattr(train_loader.dataset, 'classes', None))   # for --predict
        if params.enable_model_summary:
            print(task)
        writer, top_k = MetricsWriter(exp.path), TopK(ckpt_params, exp.ckpt_dir)
        top_k.load_state_dict(resumed.top_k or {})
    hparams = cfg['train_wrapper'].get('args', {})
    max_epochs = params.max_epochs if params.max_epochs is not None else (1000 if params.max_steps < 0 else -1)
    start_time, metrics = time.perf_counter(), {}

    # --- the loop -------------------------------------------------------------------------------------
    keep_freed_memory()
    resume_gc()   # paused for start-up when run as a script
    cores.start()   # shared with other runs on this machine (lightyaml/run/core_share.py)
    epoch = resumed.start_epoch
    while (max_epochs < 0 or epoch < max_epochs) and (params.max_steps < 0 or step < params.max_steps):
        epoch_start = time.perf_counter()
        task.finite.start_epoch(step)
        if hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)   # a new shuffle each epoch, the same on every process
        batches = enumerate(train_loader)
        if master and progress_bar_wanted(params.enable_progress_bar, sys.stderr):
            from tqdm import tqdm   # numbered from 1, as the epoch lines are
            batches = tqdm(batches, total=n_train, desc=f"epoch {epoch + 1}{f'/{max_epochs}' if max_epochs > 0 else ''}",
                           leave=False, dynamic_ncols=True)
        for batch_idx, batch in batches:
            if batch_idx >= n_train:
                break
            cores.step()
            batch = to_device(batch, device)
            accumulating = (batch_idx + 1) % params.accumulate_grad_batches != 0 and batch_idx + 1 < n_train
            # no_sync: with DDP, gradients are only exchanged on the batch that steps the optimizer
            sync = step_module.no_sync() if accumulating and world_size > 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    terms = task.compute_loss(step_module(batch), batch, 'train')
                loss = terms['loss']
                if params.accumulate_grad_batches > 1:   # an op (and a backward node) only when it changes the loss
                    loss = loss / params.accumulate_grad_batches
                if optimizer is not None:
                    (scaler.scale(loss) if scaler else loss).backward()
            if accumulating:
                continue
            if optimizer is not None:   # None: nothing to train (a model with buffers only)
                if params.gradient_clip_val:
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(task.parameters(), params.gradient_clip_val)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_schedulers([scheduler], 'step', step + 1, {})
            if ema is not None:
                ema.update(step + 1)
            if (step + 1) % params.log_every_n_steps == 0:   # the only host syncs within an epoch
                task.check_finite(epoch, step)
                if master:
                    step_values = {f'train/{k}_step': v.item() for k, v in terms.items()}
                    writer.log({**step_values, 'epoch': epoch}, step)
                    trackers.log_metrics({**step_values, 'epoch': epoch}, step)
                    if hasattr(batches, 'set_postfix'):
                        batches.set_postfix(loss=f"{step_values['train/loss_step']:.4f}")
            step += 1
            if 0 < params.max_steps <= step:
                break

        # --- end of epoch: train means, validation, scheduler, log line, checkpoints -----------------
        task.check_finite(epoch, step - 1)
        metrics = task.epoch_metrics('train', all_reduce_sum)
        validated = bool(val_sets and params.check_val_every_n_epoch
                         and (epoch + 1) % params.check_val_every_n_epoch == 0)
        if validated:
            with ema.swapped(ema.params.validate_with_ema) if ema else contextlib.nullcontext():
                for stage, (loader, n_val) in val_sets.items():   # 'val', or 'val/<name>' for each named set
                    metrics.update(evaluate(task, loader, n_val, stage, device, autocast))
            samples = task.take_samples()
            if master and samples is not None:
                write_prediction_grid(exp.path, writer.tensorboard, epoch + 1, step - 1, samples)
        step_schedulers([scheduler], 'epoch', epoch + 1, metrics)
        metrics.update(epoch=epoch, step=step - 1)
        if master:
            now = time.perf_counter()
            elapsed = resumed.elapsed + now - start_time
            line = format_epoch_line(epoch + 1, max_epochs, metrics, now - epoch_start, elapsed, epoch + 1)
            print(line)
            exp.log(line)
            writer.log({k: v for k, v in metrics.items() if k != 'step'}, step - 1)
            trackers.log_metrics({k: v for k, v in metrics.items() if k != 'step'}, step - 1)
            writer.flush()

            def save(path: Path) -> None:
                save_checkpoint(path, task, optimizer, scheduler, scaler, epoch, step, hparams,
                                {'BaseLogger': {'elapsed': elapsed}, 'TopK': top_k.state_dict(),
                                 **({STATE_KEY: ema.state_dict()} if ema else {})})
            top_k.update({**metrics, 'step': step}, save)   # named by steps done, as ModelCheckpoint names them
            if ckpt_params.save_last:
                save(exp.ckpt_dir / 'last.ckpt')
        epoch += 1
        # A search's pruner may stop the run here (not after its last epoch: it has run in full);
        # rank 0 asks it, every process follows.
        if on_validation is not None and validated and (max_epochs < 0 or epoch < max_epochs):
            stop = torch.tensor(float(master and on_validation(epoch - 1, metrics)), device=device)
            if all_reduce_sum(stop).item():
                break

    cores.stop()
    if master:
        writer.close()
        finish_run(exp, metrics, ckpt_params.monitor, *top_k.best())
    return metrics


def load_task(cfg: Config, ckpt: Path, use_ema: Optional[bool]) -> tuple[Any, bool]:
    """The Task with a checkpoint's weights, or its EMA weights (see lightyaml/train/ema.py's `ema_weights`);
    and whether they are the EMA weights."""
    task = build_task(cfg)
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    task.load_state_dict(state['state_dict'])
    averaged = ema_weights(state, use_ema, ckpt)
    if averaged is not None:
        ema_target(task).load_state_dict(averaged)
    return task, averaged is not None


def evaluate_checkpoint(args: argparse.Namespace, exp: ExperimentDir, cfg: Config, ckpt: Path) -> None:
    """What --test, --predict or --export does with the checkpoint `resolve_evaluation` found."""
    task, averaged = load_task(cfg, ckpt, args.ema)
    if args.export:
        from lightyaml.run.export import export_experiment
        export_experiment(exp, cfg, ckpt, task.model, args.format, args.out, averaged)
        return
    params = TrainerParams(**(cfg.get('trainer_params') or {}))
    device = torch.device('cuda', 0) if requested_processes(params, args.gpu)[0] == 'cuda' else torch.device('cpu')
    task.to(device)
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    autocast, _ = autocast_and_scaler(params.precision, device)
    resume_gc()   # paused for start-up when run as a script
    if args.test:
        loader = split_loader(data, 'test', f'--test {args.test}')
        record_test(exp, ckpt, evaluate(task, loader, len(loader), 'test', device, autocast), ema=averaged)
        return
    data.specs['predict'] = predict_spec(args.data, cfg)
    loader = split_loader(data, 'predict', f'--predict {args.predict}' + (f' --data {args.data}' if args.data else ''))
    task.eval()
    with torch.no_grad(), autocast:
        outputs = [task(to_device(batch, device)).cpu() for batch in loader]
    write_predictions(Path(args.out) if args.out else exp.path / 'predictions.csv', torch.cat(outputs),
                      data.dataset('predict'), exp.read_classes())


def run(args: argparse.Namespace, command: list[str]) -> None:
    """What `main` does once the command line is parsed."""
    if args.test or args.predict or args.export:
        return run_evaluation(args, validate, evaluate_checkpoint)
    if args.nodes:
        raise ConfigError('--nodes: train.py runs on several machines under torchrun (see its docstring)')
    resolved = resolve_run(args)
    if resolved.finished:
        print(f'{display_path(resolved.exp.path)} has finished (result.yaml); nothing to do')
        return
    train(resolved.cfg, resolved.exp, command, resolved.resume, args.overwrite, args.gpu, resolved.init_from,
          resolved.restart, validation_hook(resolved.exp), args.dry_run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for a configuration error)."""
    return run_cli(run, 'train.py', __doc__, argv, validate)


if __name__ == '__main__':
    status = main()
    skip_collections_at_exit()
    sys.exit(status)
