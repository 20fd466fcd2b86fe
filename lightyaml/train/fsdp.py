"""Lightning's FSDP for train_pl.py (train.py never imports it; its own sharded path is
lightyaml/train/sharding.py):

    trainer_params:
      accelerator: gpu
      strategy: {name: fsdp, args: {auto_wrap_policy: [torch.nn.Linear], state_dict_type: sharded}}

- `trainer_params.strategy` may be a Lightning strategy's name (`fsdp`, `ddp`, ...) or a spec of one,
  `{name, args}`: a name of Lightning's strategy registry (its arguments first, then `args`) or a
  class of `pytorch_lightning.strategies` (`FSDPStrategy`). FSDP's `auto_wrap_policy` and
  `activation_checkpointing_policy` take module class names, resolved as `sharding.wrap`'s are.
- FSDP needs CUDA GPUs (Lightning's limit): on the CPU it is refused in one line, before anything.
- AtomicFSDPStrategy: every FSDP run's strategy. A sharded checkpoint is a folder (a shard per
  process and `meta.pt`, torch.distributed.checkpoint's format); it is written as `<name>.tmp` and
  put in place by two renames, so a kill leaves the previous one whole. A full one is a file,
  written by AtomicCheckpointIO as any other.
- The `ema` callback averages the shards each process holds, and its checkpoint state is the whole
  average, gathered (`whole_ema_weights`) and sharded again on resume (`shard_ema_weights`).
"""
from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.strategies.fsdp import _get_full_state_dict_context
from lightning_fabric.strategies.model_parallel import _load_raw_module_state
from pytorch_lightning import strategies
from pytorch_lightning.strategies import FSDPStrategy, StrategyRegistry
from torch import nn

from lightyaml.config.checking import build, check_kwargs
from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError, did_you_mean
from lightyaml.run.checkpoint_files import loadable_hyperparameters, replace_folder
from lightyaml.train.sharding import module_classes

KEY = 'trainer_params.strategy'
POLICIES = ('auto_wrap_policy', 'activation_checkpointing_policy')   # module class names in the config
# Strategy arguments the Trainer sets from other keys.
TRAINER_SETS = {'accelerator': 'set trainer_params.accelerator', 'parallel_devices': 'set trainer_params.devices',
                'cluster_environment': 'Lightning detects it (torchrun, SLURM)', 'checkpoint_io': 'lightyaml sets it',
                'precision_plugin': 'set trainer_params.precision',
                'mixed_precision': "set trainer_params.precision (Lightning makes FSDP's mixed precision of it)",
                'use_orig_params': "lightyaml's wrappers and the ema callback use the original parameters; keep "
                                   "Lightning's default (true)"}
ON_THE_CPU = ("FSDP needs CUDA GPUs (Lightning's limit); on the CPU use strategy=ddp, or train.py's sharding: "
              "{wrap: [torch.nn.Linear]}")


def strategy_class(name: str) -> tuple[type, dict]:
    """The strategy class a name stands for and the arguments the name implies (`fsdp_cpu_offload`:
    cpu_offload=True); a ConfigError for an unknown name."""
    if name in StrategyRegistry:
        entry = StrategyRegistry[name]
        return entry['strategy'], dict(entry['init_params'])
    cls = getattr(strategies, name, None)
    if isinstance(cls, type) and issubclass(cls, strategies.Strategy):
        return cls, {}
    known = list(StrategyRegistry) + [n for n in dir(strategies) if n.endswith('Strategy')]
    raise ConfigError(f'unknown strategy {name!r}{did_you_mean(name, known)}; Lightning has: '
                      f"{', '.join(n for n in StrategyRegistry if '_find_unused_' not in n)}, ... (or a class of "
                      f"pytorch_lightning.strategies, such as FSDPStrategy)")


def is_fsdp(strategy: Any) -> bool:
    """Whether `trainer_params.strategy` (a name, a spec or a Strategy) is FSDP."""
    if isinstance(strategy, Mapping):
        strategy = strategy.get('name')
    if isinstance(strategy, str):
        try:
            return issubclass(strategy_class(strategy)[0], FSDPStrategy)
        except ConfigError:
            return False
    return isinstance(strategy, FSDPStrategy)


def check_strategy(cfg: Config, params: Mapping, problems: list[str]) -> None:
    """`trainer_params.strategy` given as a spec (a name is Lightning's to check), and FSDP on the CPU."""
    spec = params.get('strategy')
    if isinstance(spec, Mapping):
        extra = [k for k in spec if k not in ('name', 'args')]
        if extra or not isinstance(spec.get('name'), str) or not isinstance(spec.get('args') or {}, Mapping):
            problems.append(cfg.error(KEY, f'expected a name such as fsdp, or {{name: fsdp, args: {{...}}}}, got '
                                           f'{dict(spec)!r}'))
            return
        try:
            cls, _ = strategy_class(spec['name'])
        except ConfigError as e:
            problems.append(cfg.error(f'{KEY}.name', str(e)))
            return
        args = spec.get('args') or {}
        policies = {k: v for k, v in args.items() if k in POLICIES}
        check_kwargs(cls, {k: v for k, v in args.items() if k not in POLICIES}, f'{KEY}.args', cfg, problems,
                     f"strategy {spec['name']!r}", refused=TRAINER_SETS)
        if issubclass(cls, FSDPStrategy):   # its **kwargs go to torch's FullyShardedDataParallel
            check_fsdp_kwargs(cfg, spec['name'], args, problems)
        for name, value in policies.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(cfg.error(f'{KEY}.args.{name}', f'expected a list of module class names such as '
                                                                f'[torch.nn.Linear], got {value!r}'))
    if is_fsdp(spec) and not cuda_wanted(params):
        problems.append(cfg.error(KEY, ON_THE_CPU))


def check_fsdp_kwargs(cfg: Config, name: str, args: Mapping, problems: list[str]) -> None:
    """FSDP's arguments beyond FSDPStrategy's own are FullyShardedDataParallel's: a name neither
    takes is refused, with the closest of both."""
    from torch.distributed.fsdp import FullyShardedDataParallel  # what FSDPStrategy's **kwargs reach
    accepted = [*inspect.signature(FSDPStrategy).parameters, *inspect.signature(FullyShardedDataParallel).parameters]
    for key in args:
        if key not in accepted:
            problems.append(cfg.error(f'{KEY}.args.{key}', f'strategy {name!r} does not take {key!r}'
                                                           f'{did_you_mean(key, accepted)} (FSDPStrategy\'s and '
                                                           f'FullyShardedDataParallel\'s arguments)'))


def cuda_wanted(params: Mapping) -> bool:
    """Whether the Trainer of these parameters would train on CUDA GPUs."""
    accelerator = params.get('accelerator', 'auto')
    return accelerator in ('gpu', 'cuda') or (accelerator == 'auto' and torch.cuda.is_available())


def make_strategy(cfg: Config, params: dict, module: nn.Module) -> dict:
    """`params` with `strategy` built: FSDP as AtomicFSDPStrategy (class names of its policies
    resolved against `module`), any other spec as its class; a name other than FSDP's stays a name."""
    spec = params.get('strategy')
    if not is_fsdp(spec) and not isinstance(spec, Mapping):
        return params
    if is_fsdp(spec) and not cuda_wanted(params):   # --gpu cpu on a config that asks for FSDP
        raise ConfigError(cfg.error(KEY, ON_THE_CPU))
    name, args = (spec['name'], dict(spec.get('args') or {})) if isinstance(spec, Mapping) else (spec, {})
    cls, implied = strategy_class(name)
    for policy in POLICIES:
        if policy in args:   # Lightning takes a set of module classes for either
            args[policy] = set(module_classes(cfg, f'{KEY}.args.{policy}', args[policy], module))
    if issubclass(cls, FSDPStrategy) and not issubclass(cls, AtomicFSDPStrategy):
        cls = AtomicFSDPStrategy
    return {**params, 'strategy': build(f'strategy {name!r}', KEY, cfg, lambda: cls(**{**implied, **args}))}


class AtomicFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy whose sharded checkpoints (folders) are written whole or not at all:
    into `<name>.tmp` by every process, then moved over `<name>` by rank 0 (lightyaml/run/checkpoint_files.py's
    `replace_folder`), its hyperparameters made loadable as AtomicCheckpointIO makes a file's. Full
    checkpoints go through the Trainer's CheckpointIO (AtomicCheckpointIO)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        if self._state_dict_type != 'sharded':
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + '.tmp')
        for key in ('hyper_parameters', 'datamodule_hyper_parameters'):   # meta.pt: read with weights_only
            if key in checkpoint:
                checkpoint[key] = loadable_hyperparameters(checkpoint[key])
        if self.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)   # what a killed save left
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)   # the shards, and rank 0's meta.pt
        self.barrier()
        if self.is_global_zero:
            replace_folder(tmp, path)
        self.barrier()


# ---------------------------------------------------------------- the moving average of sharded weights

def shard_views(module: nn.Module) -> Callable[[], dict[str, torch.Tensor]]:
    """The tensors this process holds of `module` under FSDP (each parameter's part of its shard, the
    buffers whole), read afresh each time: FSDP points the parameters at new views as it reshards."""
    def live() -> dict[str, torch.Tensor]:
        return {**{n: p.data for n, p in module.named_parameters()}, **dict(module.named_buffers())}
    return live


def _prefix(root: nn.Module, target: nn.Module) -> str:
    """`model.` for a wrapper's model: where `target`'s names start in `root`'s state dict."""
    name = next(n for n, m in root.named_modules() if m is target)
    return f'{name}.'.replace('_fsdp_wrapped_module.', '') if name else ''


def whole_ema_weights(strategy: FSDPStrategy, ema: Any, pl_module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole average, gathered on rank 0 (empty elsewhere): every process swaps its shards of it in,
    the FSDP model's full state dict is taken (a collective), and the shards swapped back."""
    prefix = _prefix(pl_module, ema.module)
    with ema.swapped(), _get_full_state_dict_context(strategy.model, world_size=strategy.world_size):
        state = strategy.model.state_dict()
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def shard_ema_weights(strategy: FSDPStrategy, ema: Any, pl_module: nn.Module, weights: Mapping) -> None:
    """A checkpoint's whole average into the EMA as this process's shards: loaded into the model the
    way FSDP loads a full state dict, taken as the average, and the model's own weights put back."""
    prefix = _prefix(pl_module, ema.module)
    own = [t.clone() for t in ema.live().values()]
    _load_raw_module_state({prefix + k: v for k, v in weights.items()}, strategy.model, strategy.world_size,
                           strict=False)
    ema.capture()
    with torch.no_grad():
        torch._foreach_copy_(list(ema.live().values()), own)
