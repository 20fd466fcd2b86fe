"""train.py's sharded path: torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), from the config's
`sharding` section. Lightning-free (train_pl.py shards through Lightning's `strategy: fsdp`, and
shares only `module_classes` with this file).

    sharding: {wrap: [torch.nn.Linear]}    # each module of these classes its own unit, then the whole model

Each process keeps 1/N of every parameter, of its gradient and of its optimizer state (ZeRO-3); a
unit's weights are gathered for its forward and its backward and freed after. The model is sharded
on the CPU, before it is moved: only a process's shards (and one unit at a time) reach its device.

Checkpoints hold the whole state, gathered on rank 0 (`gathered`): the same file, in Lightning's
layout, as an unsharded run writes, so --test, --predict, --export, train_pl.py and a run without
`sharding` (or with another number of processes) read it, and `local` shards it again on --resume.
Buffers (BatchNorm's running statistics) are not sharded: each process keeps its own, and rank 0's
are saved. One process shards too (one shard each), on a process group of one.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from lightyaml.config.loading import Config
from lightyaml.errors import ConfigError, did_you_mean
from lightyaml.process import join_process_group


def module_classes(cfg: Config, key: str, names: Any, model: nn.Module) -> tuple[type, ...]:
    """The module classes `names` (at `key` in the config) stand for: a dotted path (`torch.nn.Linear`,
    `models.mlp.MLP`) or the name of a class of `model`'s own modules (`Linear`, `Block`). Each must
    be a module class that `model` has; else one line per name, with the classes it has."""
    have = {type(m).__name__: type(m) for m in model.modules()}
    listed = ', '.join(sorted(have))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(cfg.error(key, f'expected a list of module class names such as [torch.nn.Linear], '
                                         f'got {names!r}'))
    classes, problems = [], []
    for i, name in enumerate(names):
        found = _imported_class(name) if '.' in name else have.get(name)
        if found is None:
            problems.append(cfg.error(f'{key}.{i}', f'no module class {name!r}{did_you_mean(name, list(have))}; '
                                                    f'the model has: {listed}'))
        elif not (isinstance(found, type) and issubclass(found, nn.Module)):
            problems.append(cfg.error(f'{key}.{i}', f'{name!r} is not a module class (an nn.Module subclass)'))
        elif not any(isinstance(m, found) for m in model.modules()):
            problems.append(cfg.error(f'{key}.{i}', f'the model has no {name!r} module; it has: {listed}'))
        else:
            classes.append(found)
    if problems:
        raise ConfigError(*problems)
    return tuple(classes)


def _imported_class(dotted: str) -> Optional[Any]:
    module, _, name = dotted.rpartition('.')
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def shard(task: nn.Module, classes: tuple[type, ...], device: torch.device) -> None:
    """Shard `task.model` in place: every module of `classes` (innermost first) its own unit, then
    the model; a loss with parameters is a unit too. Everything else of the task goes to `device`.
    Joins a process group of one when there is no group (a single process)."""
    from torch.distributed.device_mesh import init_device_mesh  # with the sharded path only
    from torch.distributed.fsdp import fully_shard  # with the sharded path only
    if not dist.is_initialized():
        join_process_group('nccl' if device.type == 'cuda' else 'gloo', store=dist.HashStore(), rank=0,
                           world_size=1)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # Resharded after every forward, the model's own unit too: between steps every weight is a
    # shard, which is what the checkpoint and the EMA read.
    for module in reversed(list(task.model.modules())):   # a unit inside another first
        if isinstance(module, classes) and module is not task.model:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(task.model, mesh=mesh, reshard_after_forward=True)
    if any(p.requires_grad for p in task.loss.parameters()):
        fully_shard(task.loss, mesh=mesh, reshard_after_forward=True)
    task.to(device)   # the buffers, the metrics and whatever else is not a shard


def _whole(tensor: Any, master: bool) -> Any:
    """A tensor as a whole, on the CPU of rank 0 (None elsewhere); a DTensor is gathered (a collective)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu() if master and isinstance(tensor, torch.Tensor) else tensor if master else None


def _like(own: Any, whole: Any) -> Any:
    """`whole` laid out as `own` is: this process's shard of it where `own` is a DTensor (every process
    has read the whole tensor, so each takes its own part without communicating)."""
    if isinstance(own, DTensor) and isinstance(whole, torch.Tensor) and not isinstance(whole, DTensor):
        return distribute_tensor(whole.to(own.device, own.dtype), own.device_mesh, own.placements, src_data_rank=None)
    return whole


class Gathered:
    """A state gathered whole, standing in for the module or optimizer it came from in `save_checkpoint`."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state


def gathered(task: nn.Module, optimizer: Optional[torch.optim.Optimizer], ema: Any,
             master: bool) -> tuple[Gathered, Optional[Gathered], Optional[dict]]:
    """The task's weights, the optimizer's state and the EMA's, whole on rank 0 (the other processes
    take part in gathering and get None in them): every process calls it, at the same moment."""
    weights = {k: _whole(v, master) for k, v in task.state_dict().items()}
    optimizer_state = None
    if optimizer is not None:
        state = optimizer.state_dict()
        whole = {i: {k: _whole(v, master) for k, v in s.items()} for i, s in state['state'].items()}
        optimizer_state = {'state': whole, 'param_groups': state['param_groups']}
    ema_state = None
    if ema is not None:
        ema_state = {**ema.state_dict(), 'weights': {k: _whole(v, master) for k, v in ema.weights.items()}}
    return Gathered(weights), Gathered(optimizer_state) if optimizer is not None else None, ema_state


def local(state: dict, task: nn.Module, optimizer: Optional[torch.optim.Optimizer], ema_key: str) -> dict:
    """A whole checkpoint's weights, optimizer state and EMA weights (callbacks[ema_key]) as this
    process's shards, for `load_state_dict` on the sharded task and optimizer."""
    own = task.state_dict()
    state = {**state, 'state_dict': {k: _like(own.get(k), v) for k, v in state['state_dict'].items()}}
    if optimizer is not None and state.get('optimizer_states'):
        params = [p for group in optimizer.param_groups for p in group['params']]   # their numbering in a state
        saved = state['optimizer_states'][0]
        state['optimizer_states'] = [{**saved, 'state': {
            i: {k: _like(params[i], v) if k != 'step' and isinstance(v, torch.Tensor) and v.shape == params[i].shape
                else v for k, v in s.items()} for i, s in saved['state'].items()}}]
    ema = (state.get('callbacks') or {}).get(ema_key)
    if ema is not None:
        model = {k.removeprefix('model.'): v for k, v in own.items() if k.startswith('model.')}
        weights = {k: _like(model.get(k), v) for k, v in ema['weights'].items()}
        state['callbacks'] = {**state['callbacks'], ema_key: {**ema, 'weights': weights}}
    return state


def same_count(batches: Iterable[Any], n_batches: int, device: torch.device) -> Iterator[tuple[Any, bool]]:
    """(batch, counted) for evaluation: every process must run as many forwards as the others (each
    gathers weights with them), so one with fewer batches runs its last one again, uncounted, until
    it has run as many as the process with the most."""
    most = torch.tensor(n_batches, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    last = None
    for i, batch in enumerate(batches):
        if i >= n_batches:
            break
        last = batch
        yield batch, True
    for _ in range(int(most.item()) - n_batches):
        if last is None:
            raise ConfigError(f'sharding: process {dist.get_rank()} has no evaluation batch where another has '
                              f'{int(most.item())}; give the split at least one sample per process')
        yield last, False

