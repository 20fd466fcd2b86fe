"""An exponential moving average (EMA) of a model's weights: the one update rule both entry points
use. Lightning-free: train.py calls it directly, callbacks/ema.py wraps it for train_pl.py.

After optimizer step `s` (1 for the first): until `start_step` the average is the weights
themselves; from then on, every `every_n_steps` steps, `average += (1 - decay) * (weights - average)`.
Integer buffers (BatchNorm's step count) are copied. The average lives in checkpoints under
`callbacks.EMA`, so a resumed run continues it exactly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import nn

from lightyaml.errors import ConfigError, display_path

STATE_KEY = 'EMA'   # where checkpoints keep the average, from either entry point


@dataclass
class EMAParams:
    """The `ema` callback's arguments (train.py checks a config's against these).

    Args:
        decay: how much of the average each update keeps; 0.999 averages about the last 1,000 updates.
        start_step: optimizer steps before averaging starts (until then the average follows the weights).
        every_n_steps: update the average every this many optimizer steps.
        validate_with_ema: validate with the averaged weights (so `val/...`, the best checkpoint and,
            by default, --test, --predict and --export use them); off: validate the trained weights.
    """
    decay: float = 0.999
    start_step: int = 0
    every_n_steps: int = 1
    validate_with_ema: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f'decay must be between 0 and 1, got {self.decay!r}')
        if self.start_step < 0:
            raise ValueError(f'start_step must be 0 or more, got {self.start_step!r}')
        if self.every_n_steps < 1:
            raise ValueError(f'every_n_steps must be 1 or more, got {self.every_n_steps!r}')


def ema_target(module: nn.Module) -> nn.Module:
    """What is averaged: a wrapper's or Task's `model` (the weights a prediction uses), else the module."""
    model = getattr(module, 'model', None)
    return model if isinstance(model, nn.Module) else module


class EMA:
    """The moving average of `module`'s state dict (parameters and buffers), kept beside it.

    `live`, where given, returns the tensors to average afresh at each use (a sharded model's
    shards: lightyaml/train/fsdp.py); by default they are the state dict's, which share the weights'
    storage for the whole run.
    """

    def __init__(self, module: nn.Module, params: EMAParams,
                 live: Optional[Callable[[], dict[str, torch.Tensor]]] = None) -> None:
        self.module, self.params, self._live = module, params, live
        state = self.live()   # detached tensors sharing the weights' storage
        self.weights = {name: tensor.detach().clone() for name, tensor in state.items()}
        self._pairs = self._split(state) if live is None else None
        self._backup: Optional[dict[str, torch.Tensor]] = None

    def live(self) -> dict[str, torch.Tensor]:
        """The tensors averaged, as the module holds them now."""
        return self._live() if self._live is not None else self.module.state_dict()

    def _split(self, live: Mapping[str, torch.Tensor]) -> tuple[tuple[list, list], list]:
        floats = [name for name, tensor in live.items() if tensor.is_floating_point()]
        return (([self.weights[n] for n in floats], [live[n] for n in floats]),
                [(self.weights[n], live[n]) for n in live if n not in floats])

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Called after every optimizer step; `step` is the number of optimizer steps done."""
        p = self.params
        float_pairs, other_pairs = self._pairs or self._split(self.live())
        if step <= p.start_step:
            torch._foreach_copy_(*float_pairs)
        elif (step - p.start_step) % p.every_n_steps == 0:
            torch._foreach_lerp_(*float_pairs, 1.0 - p.decay)   # one fused call, as timm's ModelEmaV3
        else:
            return
        for average, weights in other_pairs:
            average.copy_(weights)

    @torch.no_grad()
    def capture(self) -> None:
        """Take the module's weights as they are now as the average."""
        for name, tensor in self.live().items():
            self.weights[name].copy_(tensor)

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the average into the module (keeping its own weights aside), e.g. for validation."""
        live = self.live()
        self._backup = {name: tensor.detach().clone() for name, tensor in live.items()}
        if self._live is None:
            self.module.load_state_dict(self.weights)
        else:   # into the tensors themselves: a sharded model's load_state_dict would gather
            torch._foreach_copy_(list(live.values()), [self.weights[n] for n in live])

    @torch.no_grad()
    def swap_out(self) -> None:
        """Give the module its own weights back, bit for bit."""
        if self._backup is None:
            return
        if self._live is None:
            self.module.load_state_dict(self._backup)
        else:
            live = self.live()
            torch._foreach_copy_(list(live.values()), [self._backup[n] for n in live])
        self._backup = None

    @contextlib.contextmanager
    def swapped(self, enabled: bool = True) -> Iterator[None]:
        """`with ema.swapped():` runs the block with the averaged weights."""
        if enabled:
            self.swap_in()
        try:
            yield
        finally:
            self.swap_out()

    def state_dict(self) -> dict[str, Any]:
        return {'weights': self.weights, **asdict(self.params)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, tensor in state['weights'].items():
            self.weights[name].copy_(tensor)


def ema_weights(checkpoint: Mapping[str, Any], use_ema: Optional[bool], path: Any) -> Optional[dict]:
    """The EMA weights to evaluate, predict or export with, or None for the trained weights.
    `use_ema` is --ema (True), --no-ema (False) or neither (None: the EMA weights exactly when the
    run validated with them, so the weights that chose the best checkpoint are the ones used)."""
    state = (checkpoint.get('callbacks') or {}).get(STATE_KEY)
    if use_ema and state is None:
        raise ConfigError(f'--ema: {display_path(path)} holds no EMA weights (the run had no ema callback)')
    if state is None or use_ema is False or (use_ema is None and not state.get('validate_with_ema')):
        return None
    return state['weights']
