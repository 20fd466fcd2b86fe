"""Train without Lightning: the same configs, registries and experiment folder as train_pl.py.

    python train.py --config configs/digits.yaml --name exp               # one device
    python train.py --config configs/digits.yaml --gpu 1,2                # CUDA 1 and 2, one process each (DDP)
    torchrun --standalone --nproc_per_node=2 train.py --config configs/digits.yaml \\
        trainer_params.accelerator=cpu                                   # 2 CPU processes, gloo
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 train.py --config ...                 # several machines
    srun --nodes=2 --ntasks-per-node=8 python train.py --config ...     # several machines under SLURM
    python train.py --resume save/exp trainer_params.max_epochs=40        # continue a run
    python train.py --test save/exp                                       # evaluate the best checkpoint
    python train.py --export save/exp --format onnx                       # save/exp/export/model.onnx, checked
    python train.py --config configs/digits.yaml --search configs/digits-search.yaml   # an Optuna search
    python train.py --runs                                                # the experiments in save/, newest first

The config's `loggers` may name MLFlowLogger and WandbLogger (logged through their own clients);
other Lightning loggers need train_pl.py.

It trains what the `base` wrapper trains (lightyaml/train/task.py) with a loop you can read and step
through. It never imports Lightning, yet its checkpoints use Lightning's layout, so weights move
freely between the two entry points.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from lightyaml.launch.cli import answer, exit_status, parse_command_line
from lightyaml.launch.console import survive_closed_consoles
from lightyaml.launch.runs import report_runs
from lightyaml.process import (
    pause_gc_for_start_up,
    set_cache_defaults,
    set_thread_defaults,
    skip_collections_at_exit,
    srun_as_torchrun,
)

if __name__ == '__main__' and {'--print-config', '--list', '--runs', '--diff', '--compare'} & set(sys.argv):
    # These need only config files, the registries' names or experiment folders: answer before importing torch.
    plan = parse_command_line('train.py', __doc__)
    with exit_status(plan) as status:
        if plan.action == 'runs':
            status.code = report_runs(plan)
        else:
            print(answer(plan))
    sys.exit(status.code)

survive_closed_consoles()   # a closed pipe or terminal never stops a run (lightyaml/launch/console.py)
srun_as_torchrun()   # srun's tasks join one DDP run as torchrun's processes do (RANK, WORLD_SIZE, ...)
set_thread_defaults()   # before anything imports torch, which reads them once: see lightyaml/process.py
set_cache_defaults()   # matplotlib's cache where HOME is unset or unwritable (another user, a container)
if __name__ == '__main__':
    pause_gc_for_start_up()   # until training starts: a third of the import time (lightyaml/process.py)

import torch
import torch.distributed

from lightyaml.built_specs import remember_spec
from lightyaml.config.checking import attempt, build, check_kwargs, check_sections, check_spec_list
from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError, display_path
from lightyaml.launch.console import progress_bar_wanted
from lightyaml.launch.devices import check_launched_processes, parse_gpu_flag, select_cuda_devices
from lightyaml.launch.resolve import Evaluation, Run, resolve_evaluation, resolve_run
from lightyaml.launch.search import plan_search
from lightyaml.launch.sweep import plan_sweep
from lightyaml.process import join_process_group, keep_freed_memory, leave_process_group, resume_gc
from lightyaml.registry import DATA_MODULES, TRACKERS
from lightyaml.run.checkpoint_files import (
    Optimizers,
    TopK,
    check_resumable,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from lightyaml.run.folder_lock import HELD_BY_LAUNCHER
from lightyaml.run.metrics_files import MetricsWriter, format_epoch_line, model_summary
from lightyaml.run.results import (
    finish_run,
    predict_loader,
    prediction_columns,
    record_test,
    run_classifies,
    served_stage,
    split_loader,
    write_own_curves,
    write_predictions,
)
from lightyaml.run.sample_grid import write_prediction_grid
from lightyaml.run.stopped import stopped_run
from lightyaml.run.stopping import StoppedBySignal, StopSignals, in_slurm_job
from lightyaml.run.threads import decide_threads
from lightyaml.run.trackers import TrackedRuns, check_trackers_reachable, make_tracked_runs
from lightyaml.train.early_stopping import NAME as EARLY_STOPPING
from lightyaml.train.early_stopping import EarlyStopping, EarlyStoppingParams
from lightyaml.train.ema import EMA, STATE_KEY, EMAParams, ema_target, ema_weights
from lightyaml.train.lazy import materialize, to_device
from lightyaml.train.optim import batch_size_of, lr_scale, scale_learning_rates, step_schedulers
from lightyaml.train.precision import StepPrecision
from lightyaml.train.preflight import check_loop_values, task_first_steps
from lightyaml.train.sharding import gathered, local, module_classes, same_count, shard
from lightyaml.train.task import Task, val_stages


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
    # Lightning's values and short names (lightyaml/train/precision.py); 16-mixed needs a GPU, as in Lightning
    precision: Literal['32-true', 32, '32', 'bf16-mixed', 'bf16', '16-mixed', 16, '16', '64-true', 64, '64',
                       'bf16-true', '16-true'] = '32-true'
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
    trainer_params = cfg.get('trainer_params') or {}
    if isinstance(trainer_params, Mapping) and str(trainer_params.get('precision')).startswith('transformer-engine'):
        problems.append(cfg.error('trainer_params.precision', f"{trainer_params['precision']!r} is Lightning's "
                                                              f"plugin for NVIDIA's Transformer Engine; use "
                                                              f"train_pl.py for it"))
        trainer_params = {k: v for k, v in trainer_params.items() if k != 'precision'}
    check_kwargs(TrainerParams, trainer_params, 'trainer_params', cfg, problems,
                 'train.py (use train_pl.py for other Trainer arguments)')
    check_kwargs(CheckpointParams, cfg.get('checkpoint') or {}, 'checkpoint', cfg, problems,
                 'train.py (use train_pl.py for other ModelCheckpoint arguments)')
    check_callbacks(cfg, problems)
    check_loggers(cfg, problems)
    if is_lightning_data_module(cfg.get('data_module')):
        problems.append(cfg.error('data_module.name', f"{cfg['data_module']['name']!r} is a LightningDataModule, "
                                                      f"whose setup() Lightning calls; use train_pl.py for it"))
    problems += check_loop_values(cfg)
    if problems:
        raise ConfigError(*problems)
    check_trackers_reachable(cfg)   # a tracker server that does not answer: one line, before anything is created


# The callbacks with a Lightning-free twin: the `ema` callback (lightyaml/train/ema.py) and Lightning's
# EarlyStopping (lightyaml/train/early_stopping.py); the others need Lightning.
OWN_CALLBACKS = {'ema': EMAParams, EARLY_STOPPING: EarlyStoppingParams}


def check_callbacks(cfg: Config, problems: list[str]) -> None:
    """The config's callbacks: the ones train.py runs, each well formed, at most one `ema`."""
    callbacks = cfg.get('callbacks') or []
    if not isinstance(callbacks, list):
        problems.append(cfg.error('callbacks', f'expected a list of callback specs, got {type(callbacks).__name__}'))
        return
    names = [spec.get('name') if isinstance(spec, Mapping) else spec for spec in callbacks]
    for i, name in enumerate(names):
        if name not in OWN_CALLBACKS:
            problems.append(cfg.error(f'callbacks.{i}', f"train.py runs only the 'ema' and {EARLY_STOPPING!r} "
                                                        f"callbacks, not {name!r}; use train_pl.py for other "
                                                        f"Lightning callbacks"))
        elif name == 'ema' and names.index('ema') != i:
            problems.append(cfg.error(f'callbacks.{i}', "a second 'ema' callback; keep one"))
        elif not isinstance(callbacks[i], Mapping) or set(callbacks[i]) - {'name', 'args'}:
            problems.append(cfg.error(f'callbacks.{i}', f"expected {{name: {name}, args: {{...}}}}, "
                                                        f"got {callbacks[i]!r}"))
        else:
            before = len(problems)
            check_kwargs(OWN_CALLBACKS[name], callbacks[i].get('args') or {}, f'callbacks.{i}.args', cfg, problems,
                         f'callback {name!r}', required=True)
            if len(problems) == before:   # well-typed: now the ranges (decay between 0 and 1, mode, ...)
                try:
                    build_callback_params(cfg, i)
                except ConfigError as e:
                    problems += e.problems


def build_callback_params(cfg: Config, i: int) -> Any:
    """The arguments of the config's callback `i` (EMAParams, EarlyStoppingParams)."""
    spec = cfg['callbacks'][i]
    return build(f"callback {spec['name']!r}", f'callbacks.{i}', cfg,
                 lambda: OWN_CALLBACKS[spec['name']](**spec.get('args') or {}))


def ema_params(cfg: Config) -> Optional[EMAParams]:
    """The arguments of the config's `ema` callback, or None without one."""
    found = [i for i, spec in enumerate(cfg.get('callbacks') or []) if isinstance(spec, Mapping)
             and spec.get('name') == 'ema']
    return build_callback_params(cfg, found[0]) if found else None


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
    if not isinstance(spec, Mapping) or not isinstance(spec.get('name'), str):
        return False
    if spec['name'] not in DATA_MODULES.names():
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
    if isinstance(devices, str) and ',' in devices:   # '0,1': device indices, as Lightning reads them
        devices = [int(i) for i in devices.split(',') if i]
    count = len(devices) if isinstance(devices, list) else 1 if devices == 'auto' else int(devices)
    if isinstance(devices, list) and wants_cuda:
        select_cuda_devices(devices)
    return ('cuda' if wants_cuda else 'cpu'), count


def launch_processes(nproc: int, argv: Sequence[str]) -> None:
    """Run this script in `nproc` processes through torch.distributed's own launcher (what
    torchrun uses), one per device; a process that fails ends the others and this call."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # only to launch several processes
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend='c10d', rdzv_endpoint='localhost:0', max_restarts=0, monitor_interval=0.5)
    from torch.distributed.elastic.multiprocessing.api import SignalException  # with the launcher above

    def pass_on(signum: int, frame: Any) -> None:   # as the launcher does with SIGTERM: to every process
        raise SignalException(f'got {signal.Signals(signum).name}', sigval=signal.Signals(signum))
    # In a SLURM job, SIGUSR1 (the warning before a requeue) reaches the processes too.
    previous = signal.signal(signal.SIGUSR1, pass_on) if in_slurm_job() else None
    try:
        elastic_launch(config, sys.executable)(os.path.abspath(__file__), *argv)
    except SignalException as e:   # it passed the signal on; rank 0 kept last.ckpt and wrote the line
        raise StoppedBySignal(128 + int(e.sigval)) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)


@dataclass
class Process:
    """Where this process trains: its device, global rank and the number of processes."""
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0   # only global rank 0 writes files


def setup_process(device_type: str) -> Process:
    """This process's device and rank; under torchrun (or our launcher) joins the process group."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device('cuda', local_rank) if device_type == 'cuda' else torch.device('cpu')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1:
        join_process_group('nccl' if device.type == 'cuda' else 'gloo')
        return Process(device, torch.distributed.get_rank(), world_size)
    return Process(device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity when there is one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


# ------------------------------------------------------------------------------------------- training

def limit(n_batches: int, value: Union[int, float, None]) -> int:
    """Lightning's limit_*_batches: an int is a count, a float a fraction of the loader."""
    if value is None:
        return n_batches
    return min(n_batches, value if isinstance(value, int) else int(n_batches * value))


def evaluate(task: Any, loader: Any, n_batches: int, stage: str, precision: StepPrecision,
             sharded: bool = False) -> dict:
    """Loss terms and metrics of `stage` over the first `n_batches` batches, across processes. A
    sharded model runs as many forwards in every process (the uncounted ones repeat a batch)."""
    task.eval()
    batches = same_count(loader, n_batches, precision.device) if sharded else (
        (batch, True) for batch, _ in zip(loader, range(n_batches)))
    with torch.no_grad():
        for batch, counted in batches:
            with precision.forward():
                batch = precision.batch(to_device(batch, precision.device))
                task.step(batch, stage) if counted else task.model(batch)
    task.train()
    return task.epoch_metrics(stage, all_reduce_sum)


def build_task(cfg: Config) -> Any:
    """The `base` wrapper's Task from `train_wrapper.args` (Lightning-free)."""
    return build("the 'base' wrapper", 'train_wrapper', cfg, lambda: Task(**cfg['train_wrapper'].get('args', {})))


@dataclass
class Resumed:
    """Where a resumed run continues: counters, time already spent, and train.py's top-k state."""
    start_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    top_k: Optional[dict] = None
    ema: Optional[dict] = None
    callbacks: dict = field(default_factory=dict)   # every callback state, EarlyStopping's by its key


def restore(path: Path, task: Any, optimizers: Optimizers, device: torch.device, sharded: bool) -> Resumed:
    """Weights, optimizer, scheduler, scaler, counters and generator states from a checkpoint;
    optimizer and scheduler arguments the config now gives differently replace the saved ones. A
    sharded model takes its shards of the whole states the checkpoint holds."""
    state = torch.load(path, map_location=device, weights_only=True)
    if sharded:
        state = local(state, task, optimizers.optimizer, STATE_KEY)
    task.load_state_dict(state['state_dict'])
    optimizer, scheduler, scaler = optimizers.optimizer, optimizers.scheduler, optimizers.scaler
    if optimizer is not None:
        optimizer.load_state_dict(state['optimizer_states'][0])
    if scheduler and state['lr_schedulers']:
        scheduler['scheduler'].load_state_dict(state['lr_schedulers'][0])
    if scaler is not None and 'MixedPrecision' in state:
        scaler.load_state_dict(state['MixedPrecision'])
    for change in task.apply_changed_specs(optimizer, scheduler, state['hyper_parameters']) if optimizer else ():
        print(f'resume: {change} (from the config)')
    set_rng_state(state['callbacks']['LastCheckpoint']['rng'])   # the next shuffle and dropout masks
    callbacks = state['callbacks']
    return Resumed(state['epoch'] + 1, state['global_step'], callbacks.get('BaseLogger', {}).get('elapsed', 0.0),
                   callbacks.get('TopK', {}), callbacks.get(STATE_KEY), callbacks)


def train(run: Run) -> dict[str, float]:
    """Validate, build, check one training and validation step (the preflight), train; returns the
    last epoch's metrics (on every process); --dry-run stops after the preflight. With several
    devices this process launches one process per device, each of which runs this function. The
    experiment folder's lock is released when it ends, however it ends."""
    with run.exp.writing():
        validate(run.cfg)
        params = TrainerParams(**(run.cfg.get('trainer_params') or {}))
        # As train_pl.py builds its Trainer: whatever the device values make fail is one line naming them.
        device_type, nproc = build('the devices', 'trainer_params', run.cfg,
                                   lambda: requested_processes(params, run.gpu))
        check_launched_processes(nproc, run.gpu, run.cfg)   # under srun or torchrun: one process per device
        if nproc > 1 and 'WORLD_SIZE' not in os.environ:
            if run.exp.locked:   # this launcher writes nothing itself; its rank 0 does, under this lock
                os.environ[HELD_BY_LAUNCHER] = str(run.exp.path.resolve())
            try:
                launch_processes(nproc, run.command[2:])   # each process runs this function again, under the launcher
            finally:
                os.environ.pop(HELD_BY_LAUNCHER, None)
            return {}
        process = setup_process(device_type)
        trackers = make_tracked_runs(run.cfg.get('loggers') or [], TRACKERS.get, run.exp, run.cfg,
                                     run.resume is not None)
        decide_threads(run.cfg, int(os.environ.get('LOCAL_WORLD_SIZE', '1')))   # once, recorded in config.yaml
        status = 'failed'
        try:
            metrics = fit(run, params, process, trackers)
            status = 'success'
            return metrics
        finally:
            trackers.finish(status)
            leave_process_group()   # several processes, or the sharded path's group of one; fit's objects are gone


def fit(run: Run, params: TrainerParams, process: Process, trackers: TrackedRuns) -> dict[str, float]:
    """Build and train in this process (or, with --dry-run, check the first steps); returns the last
    epoch's metrics. What it built is gone when it returns, the process group's holders included."""
    with stopped_run(run.exp, run.cfg):   # an error once under way: one line, the checkpoint to resume from
        training = set_up(run, params, process)
        if run.dry_run:
            if process.master:
                print(training.first_steps.report() if training.first_steps else
                      'dry run: built everything and sharded the model; the first steps are not run on a '
                      'sharded model (they would need all of it on one device); nothing was created')
            return {}
        with training.stop.installed():   # SIGTERM, SIGINT, SIGHUP: stop at the next batch
            return loop(start(training, trackers))


@dataclass
class Training:
    """Everything the loop uses: built by `set_up`, the folder's side added by `start`."""
    run: Run
    params: TrainerParams
    process: Process
    task: Any
    optimizers: Optimizers
    step_module: Any      # what the training step calls: the model alone, or DDP around the task
    precision: StepPrecision   # the forward's context, the batch's dtype, the float16 grad scaler
    train_set: tuple[Any, int]                  # (loader, batches an epoch)
    val_sets: dict[str, tuple[Any, int]]        # {'val' or 'val/<name>': (loader, batches)}
    first_steps: Any
    resumed: Resumed = field(default_factory=Resumed)
    ema: Optional[EMA] = None
    early_stopping: list[EarlyStopping] = field(default_factory=list)
    logged: dict[str, float] = field(default_factory=dict)   # the latest value of everything logged (Lightning's
                                                              # callback_metrics), what EarlyStopping looks at
    trackers: Optional[TrackedRuns] = None
    writer: Optional[MetricsWriter] = None      # rank 0 only, as top_k
    top_k: Optional[TopK] = None
    start_time: float = 0.0
    # the first stop signal, if any; under SLURM SIGUSR1 also stops, and requeues the job
    stop: StopSignals = field(default_factory=lambda: StopSignals(requeue=in_slurm_job()))
    stopping: bool = False                      # every process agreed to stop at this batch

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded (the config's `sharding`): its states are then gathered to be saved."""
        return self.run.cfg.get('sharding') is not None

    @property
    def max_epochs(self) -> int:
        """Lightning's meaning: 1000 when neither max_epochs nor max_steps is set, -1 for no limit."""
        params = self.params
        return params.max_epochs if params.max_epochs is not None else (1000 if params.max_steps < 0 else -1)


def set_up(run: Run, params: TrainerParams, process: Process) -> Training:
    """Seeds, data, task, optimizer and scheduler, then the preflight: the first training and
    validation step on a copy, before anything is created."""
    cfg, device = run.cfg, process.device
    if process.world_size > 1:   # a seed drawn because the config has none: every process takes rank 0's
        seed = torch.tensor([cfg['seed']], device=device)
        torch.distributed.broadcast(seed, src=0)
        cfg['seed'] = int(seed.item())
    if params.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg['seed'])
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    task = build_task(cfg)
    if run.init_from is not None:   # fine-tuning: the weights only; optimizer, schedule and counters start fresh
        load_weights(task, run.init_from, prefixes=cfg.get('init_from'))
    sharding = cfg.get('sharding')
    if sharding is None:   # a sharded model goes to the device in shards, below
        task.to(device)
    train_loader = build('the data loaders', 'data_module', cfg, lambda: data.train_dataloader())
    val_loaders = data.val_dataloader() or []   # one loader, or one per named validation set
    val_loaders = val_loaders if isinstance(val_loaders, list) else [val_loaders]
    # Lazy modules take their shapes from the first batch.
    attempt('the first training step', 'train_wrapper', cfg, lambda: materialize(task, train_loader))
    precision = StepPrecision(params.precision, device, warn=process.master)
    if sharding is not None and precision.scaler is not None:
        raise ConfigError(cfg.error('trainer_params.precision', "16-mixed with sharding needs a gradient scaler "
                                                                "that agrees across shards, which train.py has not; "
                                                                "use bf16-mixed (or train_pl.py's strategy: fsdp)"))
    precision.module(task)   # 64-true, bf16-true, 16-true: the weights in that dtype, before the optimizer sees them
    if sharding is not None:   # FSDP2: each process keeps a shard of every weight (lightyaml/train/sharding.py)
        shard(task, module_classes(cfg, 'sharding.wrap', sharding.get('wrap') or [], task.model), device)
    # A model (and loss) without trainable parameters is evaluated and checkpointed as it is.
    built = attempt('building the optimizer and scheduler', 'train_wrapper.args.optim_spec', cfg,
                    task.configure_optimizers) or {'optimizer': None}
    scale_lr(cfg, built, process.world_size, params.accumulate_grad_batches, data)
    optimizers = Optimizers(built['optimizer'], built.get('lr_scheduler'), precision.scaler)
    # What the training step calls: the model alone (Task.forward minus a module call; sharded, it
    # averages its gradients itself), or under DDP the wrapper around the whole task, which averages
    # them inside backward().
    step_module = (task.model if process.world_size == 1 or optimizers.optimizer is None or sharding is not None else
                   torch.nn.parallel.DistributedDataParallel(
                       task, device_ids=[device.index] if device.index is not None else None))
    train_set = (train_loader, limit(len(train_loader), params.limit_train_batches))
    val_sets = {stage: (loader, limit(len(loader), params.limit_val_batches)) for stage, loader in
                zip(val_stages(getattr(data, 'val_names', None), len(val_loaders)), val_loaders)}
    # The preflight steps a copy of the whole model on one device: what sharding is there to avoid.
    first_steps = task_first_steps(cfg, task, train_set, val_sets, precision) if sharding is None else None
    return Training(run, params, process, task, optimizers, step_module, precision, train_set, val_sets, first_steps)


def scale_lr(cfg: Config, built: Mapping, processes: int, accumulate: int, data: Any) -> None:
    """With the config's `scale_lr`: the learning rates scaled by the global batch over its base
    batch, before a resumed run's saved (already scaled) states are loaded over them."""
    factor = lr_scale(cfg, processes, batch_size_of(cfg, data), accumulate)
    if factor is not None and built['optimizer'] is not None:
        scheduler = (built.get('lr_scheduler') or {}).get('scheduler')
        scale_learning_rates([built['optimizer']], [scheduler] if scheduler is not None else [], factor)


def start(t: Training, trackers: TrackedRuns) -> Training:
    """Continue from the checkpoint on --resume, start the moving average of the weights (the
    `ema` callback), and create or continue the experiment folder (rank 0)."""
    run = t.run
    if run.resume:   # a checkpoint of another model fails here, before the folder is touched
        if run.resume.is_dir():
            raise ConfigError(f'--resume {display_path(run.resume)}: a checkpoint folder of Lightning\'s FSDP (its '
                              f'shards) continues under train_pl.py\'s strategy: fsdp; train.py reads its weights '
                              f'(--test, --init-from)')
        check_resumable(t.task, run.resume, cfg=run.cfg)
        t.resumed = restore(run.resume, t.task, t.optimizers, t.process.device, t.sharded)
    ema_args = ema_params(run.cfg)
    t.ema = EMA(ema_target(t.task), ema_args) if ema_args is not None else None   # averages task.model
    if t.ema is not None and t.resumed.ema:
        t.ema.load_state_dict(t.resumed.ema)
    t.early_stopping = make_early_stopping(run.cfg, t.params, t.resumed)
    t.trackers = trackers
    if t.process.master:
        run.exp.start(run.cfg, run.command, resume=run.resume is not None or run.restart, overwrite=run.overwrite)
        trackers.start()   # their runs begin now, not inside the first epoch's time
        run.exp.log(model_summary(t.task))
        run.exp.write_classes(getattr(t.train_set[0].dataset, 'classes', None))   # for --predict
        if t.params.enable_model_summary:
            print(t.task)
        t.writer, t.top_k = MetricsWriter(run.exp.path), TopK(CheckpointParams(**(run.cfg.get('checkpoint') or {})),
                                                              run.exp.ckpt_dir)
        t.top_k.load_state_dict(t.resumed.top_k or {})
    t.start_time = time.perf_counter()
    return t


def make_early_stopping(cfg: Config, params: TrainerParams, resumed: Resumed) -> list[EarlyStopping]:
    """The config's EarlyStopping callbacks; a resumed run's go on counting, as Lightning's do."""
    callbacks = []
    for i, spec in enumerate(cfg.get('callbacks') or []):
        if spec['name'] == EARLY_STOPPING:
            callback = EarlyStopping(build_callback_params(cfg, i), params.check_val_every_n_epoch)
            remember_spec(callback, 'callback', spec)   # an error it raises names its key, callbacks.<i>
            if callback.state_key in resumed.callbacks:
                callback.load_state_dict(resumed.callbacks[callback.state_key])
            callbacks.append(callback)
    return callbacks


def loop(t: Training) -> dict[str, float]:
    """Epochs until max_epochs or max_steps (or a search's pruner) stop it; the last epoch's metrics."""
    keep_freed_memory()
    resume_gc()   # paused for start-up when run as a script
    epoch, step, metrics = t.resumed.start_epoch, t.resumed.step, {}
    max_epochs, max_steps = t.max_epochs, t.params.max_steps
    while (max_epochs < 0 or epoch < max_epochs) and (max_steps < 0 or step < max_steps):
        epoch_start = time.perf_counter()
        step = train_epoch(t, epoch, step)
        if t.stopping:
            stop_for_signal(t, epoch, step)
        metrics, validated, stopped_early = end_epoch(t, epoch, step, epoch_start)
        epoch += 1
        # A search's pruner may stop the run here (not after its last epoch: it has run in full);
        # rank 0 asks it, every process follows.
        if t.run.on_validation is not None and validated and (max_epochs < 0 or epoch < max_epochs):
            pruned = torch.tensor(float(t.process.master and t.run.on_validation(epoch - 1, metrics)),
                                  device=t.process.device)
            if all_reduce_sum(pruned).item():
                break
        if stopped_early:   # EarlyStopping: this was the last epoch
            break
    if t.process.master:
        t.writer.close()
        finish_run(t.run.exp, metrics, t.top_k.params.monitor, *t.top_k.best())
    if t.process.world_size > 1:   # all leave together: gloo aborts a process that tears down while another works
        torch.distributed.barrier()
    return metrics


def train_epoch(t: Training, epoch: int, step: int) -> int:
    """One epoch's training steps (gradients accumulated over `accumulate_grad_batches`); returns
    the steps done so far."""
    params, (train_loader, n_train) = t.params, t.train_set
    t.task.finite.start_epoch(step)
    if hasattr(train_loader.sampler, 'set_epoch'):
        train_loader.sampler.set_epoch(epoch)   # a new shuffle each epoch, the same on every process
    batches = enumerate(train_loader)
    if t.process.master and progress_bar_wanted(params.enable_progress_bar, sys.stderr):
        from tqdm import tqdm  # numbered from 1, as the epoch lines are; only on a terminal
        batches = tqdm(batches, total=n_train, leave=False, dynamic_ncols=True,
                       desc=f"epoch {epoch + 1}{f'/{t.max_epochs}' if t.max_epochs > 0 else ''}")
    for batch_idx, batch in batches:
        if batch_idx >= n_train:
            break
        batch = t.precision.batch(to_device(batch, t.process.device))
        accumulating = (batch_idx + 1) % params.accumulate_grad_batches != 0 and batch_idx + 1 < n_train
        # no_sync: with DDP, gradients are only exchanged on the batch that steps the optimizer (a sharded
        # model reduces each batch's into its shards: whole gradients are never kept)
        ddp = t.process.world_size > 1 and not t.sharded
        sync = t.step_module.no_sync() if accumulating and ddp else contextlib.nullcontext()
        with sync:
            with t.precision.forward():
                terms = t.task.compute_loss(t.step_module(batch), batch, 'train')
            loss = terms['loss']
            if params.accumulate_grad_batches > 1:   # an op (and a backward node) only when it changes the loss
                loss = loss / params.accumulate_grad_batches
            if t.optimizers.optimizer is not None:
                (t.optimizers.scaler.scale(loss) if t.optimizers.scaler else loss).backward()
        if accumulating:
            continue
        optimizer_step(t, step)
        if (step + 1) % params.log_every_n_steps == 0:   # the only host syncs within an epoch
            log_step(t, epoch, step, terms, batches)
        step += 1
        if 0 < params.max_steps <= step or signalled(t):
            break
    return step


def signalled(t: Training) -> bool:
    """Whether a stop signal came; rank 0 decides, every process follows (a sync per step only
    with several processes)."""
    if t.process.world_size > 1:
        stop = torch.tensor(float(t.process.master and t.stop.signum is not None), device=t.process.device)
        t.stopping = bool(all_reduce_sum(stop).item())
    else:
        t.stopping = t.stop.signum is not None
    return t.stopping


def stop_for_signal(t: Training, epoch: int, step: int) -> None:
    """Rank 0 keeps last.ckpt as of this step (a resume runs the interrupted epoch again from its
    start, the step count going on), or for a requeue as the last epoch left it (exact: see
    StopSignals.keeps_last_epoch); then the one line; every process exits with 128 + the signal."""
    kept_epoch = t.process.master and t.stop.keeps_last_epoch(bool(t.top_k.params.save_last))
    # every process takes part in gathering a sharded model's states (only rank 0 knows kept_epoch)
    whole = gathered(t.task, t.optimizers.optimizer, t.ema, t.process.master) if t.sharded else None
    if t.process.master:
        t.writer.close()
        write_own_curves(t.run.exp)
        if not kept_epoch:
            save_training(t, t.run.exp.ckpt_dir / 'last.ckpt', (epoch - 1, step),
                          t.resumed.elapsed + time.perf_counter() - t.start_time, whole)
    signum = torch.tensor(float(t.stop.signum or 0), device=t.process.device)
    if t.process.world_size > 1:   # the other processes exit with rank 0's signal
        torch.distributed.broadcast(signum, src=0)
        t.stop.signum = int(signum.item())
    raise t.stop.stop(t.run.exp, t.run.command, (epoch + 1, step), t.process.master, kept_epoch)


def optimizer_step(t: Training, step: int) -> None:
    """Clip, step (through the float16 scaler if any) and zero the gradients; step a per-step
    scheduler and the moving average."""
    optimizer, scaler = t.optimizers.optimizer, t.optimizers.scaler
    if optimizer is not None:   # None: nothing to train (a model with buffers only)
        if t.params.gradient_clip_val:
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(t.task.parameters(), t.params.gradient_clip_val)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step_schedulers([t.optimizers.scheduler], 'step', step + 1, {})
    if t.ema is not None:
        t.ema.update(step + 1)


def log_step(t: Training, epoch: int, step: int, terms: Mapping[str, torch.Tensor], batches: Any) -> None:
    """Every `log_every_n_steps`: the NaN check, and rank 0 logs the step's loss terms."""
    t.task.check_finite(epoch, step)
    step_values = {f'train/{k}_step': v.item() for k, v in terms.items()}
    t.logged.update(step_values)
    if t.process.master:
        t.writer.log({**step_values, 'epoch': epoch}, step)
        t.trackers.log_metrics({**step_values, 'epoch': epoch}, step)
        if hasattr(batches, 'set_postfix'):
            batches.set_postfix(loss=f"{step_values['train/loss_step']:.4f}")


def end_epoch(t: Training, epoch: int, step: int, epoch_start: float) -> tuple[dict[str, float], bool, bool]:
    """Train means, validation (with the EMA weights where asked), EarlyStopping's check, the epoch's
    scheduler step, the log line and checkpoints; returns the metrics, whether it validated and
    whether EarlyStopping stops the run here."""
    t.task.check_finite(epoch, step - 1)
    metrics = t.task.epoch_metrics('train', all_reduce_sum)
    validated = bool(t.val_sets and t.params.check_val_every_n_epoch
                     and (epoch + 1) % t.params.check_val_every_n_epoch == 0)
    if validated:
        with t.ema.swapped(t.ema.params.validate_with_ema) if t.ema else contextlib.nullcontext():
            for stage, (loader, n_val) in t.val_sets.items():   # 'val', or 'val/<name>' for each named set
                metrics.update(evaluate(t.task, loader, n_val, stage, t.precision, t.sharded))
        samples = t.task.take_samples()
        if t.process.master and samples is not None:
            write_prediction_grid(t.run.exp.path, t.writer.tensorboard, epoch + 1, step - 1, samples)
    t.logged.update(metrics)
    # Every callback checks, as Lightning calls each; before the checkpoints, which keep their states.
    checks = [early_stopping.check(epoch, validated, t.logged, t.process.master)
              for early_stopping in t.early_stopping]
    stop = any(checks)
    step_schedulers([t.optimizers.scheduler], 'epoch', epoch + 1, metrics)
    metrics.update(epoch=epoch, step=step - 1)
    # A sharded model's states are gathered whole by every process together; rank 0 writes them.
    whole = gathered(t.task, t.optimizers.optimizer, t.ema, t.process.master) if t.sharded else None
    if t.process.master:
        write_epoch(t, epoch, step, metrics, epoch_start, whole)
    return metrics, validated, stop


def write_epoch(t: Training, epoch: int, step: int, metrics: Mapping[str, float], epoch_start: float,
                whole: Optional[tuple] = None) -> None:
    """Rank 0: the epoch's log line, metrics files and trackers, the top-k and last checkpoints."""
    now = time.perf_counter()
    elapsed = t.resumed.elapsed + now - t.start_time
    line = format_epoch_line(epoch + 1, t.max_epochs, metrics, now - epoch_start, elapsed, epoch + 1)
    print(line)
    t.run.exp.log(line)
    t.writer.log({k: v for k, v in metrics.items() if k != 'step'}, step - 1)
    t.trackers.log_metrics({k: v for k, v in metrics.items() if k != 'step'}, step - 1)
    t.writer.flush()

    def save(path: Path) -> None:
        save_training(t, path, (epoch, step), elapsed, whole)
    t.top_k.update({**metrics, 'step': step}, save)   # named by steps done, as ModelCheckpoint names them
    if t.top_k.params.save_last:
        save(t.run.exp.ckpt_dir / 'last.ckpt')


def save_training(t: Training, path: Path, counters: tuple[int, int], elapsed: float,
                  whole: Optional[tuple] = None) -> None:
    """A checkpoint of the training state: weights, optimizer, `counters` (epoch, step), the time
    spent, the top-k, EMA and EarlyStopping states; `whole`: a sharded model's, gathered."""
    task, optimizer, ema = whole or (t.task, t.optimizers.optimizer, t.ema.state_dict() if t.ema else None)
    save_checkpoint(path, task, dataclasses.replace(t.optimizers, optimizer=optimizer), counters,
                    t.run.cfg['train_wrapper'].get('args', {}),
                    {'BaseLogger': {'elapsed': elapsed}, 'TopK': t.top_k.state_dict(),
                     **({STATE_KEY: ema} if ema is not None else {}),
                     **{e.state_key: e.state_dict() for e in t.early_stopping}})


def load_task(cfg: Config, ckpt: Path, use_ema: Optional[bool]) -> tuple[Any, bool]:
    """The Task with a checkpoint's weights, or its EMA weights (see lightyaml/train/ema.py's `ema_weights`);
    and whether they are the EMA weights."""
    task = build_task(cfg)
    state = read_checkpoint(ckpt, str(ckpt))   # a file, or a folder of shards (Lightning's FSDP)
    task.load_state_dict(state['state_dict'])
    averaged = ema_weights(state, use_ema, ckpt)
    if averaged is not None:
        ema_target(task).load_state_dict(averaged)
    return task, averaged is not None


def evaluate_checkpoint(target: Evaluation) -> None:
    """What --test, --predict or --export does with the checkpoint `resolve_evaluation` found."""
    args, exp, cfg, ckpt = target.args, target.exp, target.cfg, target.ckpt
    task, averaged = load_task(cfg, ckpt, args.ema)
    if args.export:
        from lightyaml.run.export import export_experiment  # onnx and friends: only for --export
        export_experiment(exp, cfg, task.model, (ckpt, averaged), args.format, args.out)
        return
    params = TrainerParams(**(cfg.get('trainer_params') or {}))
    device = torch.device('cuda', 0) if requested_processes(params, args.gpu)[0] == 'cuda' else torch.device('cpu')
    precision = StepPrecision(params.precision, device, warn=False)
    precision.module(task.to(device))
    data = build('the data module', 'data_module', cfg, lambda: DATA_MODULES.make(cfg['data_module']))
    resume_gc()   # paused for start-up when run as a script
    if args.test:
        flag = f'--test {args.test}'
        served_stage(data, 'test', cfg, flag)
        loader = split_loader(data, 'test', flag)
        record_test(exp, ckpt, evaluate(task, loader, len(loader), 'test', precision), ema=averaged)
        return
    flag = f'--predict {args.predict}' + (f' --data {args.data}' if args.data else '')
    loader, dataset = predict_loader(data, cfg, args.data, flag)
    task.eval()
    with torch.no_grad(), precision.forward():
        outputs = [out.cpu() if isinstance(out := task(precision.batch(to_device(batch, device))), torch.Tensor)
                   else out for batch in loader]
    classes = exp.read_classes()
    write_predictions(Path(args.out) if args.out else exp.path / 'predictions.csv', prediction_columns(outputs, flag),
                      dataset, classes, run_classifies(cfg, classes))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line's plan, carried out as train_pl.py's main does; returns the exit status."""
    plan = parse_command_line('train.py', __doc__, argv)
    with exit_status(plan) as status:
        if plan.action == 'answer':
            print(answer(plan))
        elif plan.action == 'runs':   # --runs, --diff, --compare: read back from the experiment folders
            status.code = report_runs(plan)
        elif plan.action == 'evaluate':
            evaluation = resolve_evaluation(plan)
            validate(evaluation.cfg)
            with evaluation.held():
                evaluate_checkpoint(evaluation)
        elif plan.args.nodes:
            raise ConfigError('--nodes: train.py runs on several machines under torchrun or srun (see its docstring)')
        elif plan.action == 'tune':
            flag = '--find-lr' if plan.args.find_lr else '--find-batch-size'
            raise ConfigError(f"{flag}: Lightning's Tuner does it, for the same configs: run it with train_pl.py")
        elif plan.action in ('sweep', 'search'):   # each run a process of this script, started by it
            runs = plan_search(plan) if plan.action == 'search' else plan_sweep(plan)
            for cfg in runs.configs:
                validate(cfg)
            status.code = runs.start()
        else:
            train(resolve_run(plan))
    return status.code


if __name__ == '__main__':
    status = main()
    skip_collections_at_exit(status)
    sys.exit(status)
