"""Lightning's EarlyStopping callback, Lightning-free, for train.py: the same arguments, the same
rule, decided at the same point of an epoch, and its state in checkpoints under Lightning's key, so
a run stops at the same epoch in both entry points and a checkpoint resumes in either.

    callbacks:
      - {name: EarlyStopping, args: {monitor: val/acc, mode: max, patience: 3, min_delta: 0.001}}

The rule (Lightning's `_evaluate_stopping_criteria`), on the monitored value as Lightning holds it
(a float32 tensor): stop if it is not finite (`check_finite`), if it passed `stopping_threshold`
or `divergence_threshold`; else it improves on the best by more than `min_delta` (the wait count
starts again) or it does not (the count goes up, and at `patience` the run stops). By default the
check runs at the end of every training epoch, after its validation; with
`check_val_every_n_epoch` other than 1 (or `check_on_train_epoch_end: false`) after each validation.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch

NAME = 'EarlyStopping'   # the callback's name in configs: Lightning's class
REASONS = {'not stopped': 0, 'stopping threshold': 1, 'divergence threshold': 2, 'patience exhausted': 3,
           'non-finite metric': 4}   # Lightning's EarlyStoppingReason values


@dataclass
class EarlyStoppingParams:
    """EarlyStopping's arguments, with Lightning's names and defaults (train.py checks a config's
    against these)."""
    monitor: str
    min_delta: float = 0.0
    patience: int = 3
    verbose: bool = False
    mode: str = 'min'
    strict: bool = True
    check_finite: bool = True
    stopping_threshold: Optional[float] = None
    divergence_threshold: Optional[float] = None
    check_on_train_epoch_end: Optional[bool] = None
    log_rank_zero_only: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ('min', 'max'):
            raise ValueError(f"`mode` can be min, max, got {self.mode}")   # Lightning's words


class EarlyStopping:
    """One EarlyStopping callback of the config: `check` after each epoch (and validation) says
    whether the run stops there."""

    def __init__(self, params: EarlyStoppingParams, check_val_every_n_epoch: Optional[int]) -> None:
        self.params = params
        self.better = torch.gt if params.mode == 'max' else torch.lt
        self.min_delta = params.min_delta * (1 if params.mode == 'max' else -1)
        self.best_score = torch.tensor(-math.inf if params.mode == 'max' else math.inf)
        self.wait_count, self.stopped_epoch, self.reason, self.message = 0, 0, 0, None
        # Lightning's default: at the end of each training epoch when every epoch validates once
        self.on_train_epoch_end = (params.check_on_train_epoch_end if params.check_on_train_epoch_end is not None
                                   else check_val_every_n_epoch == 1)

    @property
    def state_key(self) -> str:
        """Lightning's key for this callback's state in a checkpoint (`Callback._generate_state_key`)."""
        return f"{NAME}{ {'monitor': self.params.monitor, 'mode': self.params.mode} !r}"

    def check(self, epoch: int, validated: bool, metrics: Mapping[str, float], master: bool) -> bool:
        """After epoch `epoch` (0-based; `validated`: whether it ran validation), with every value
        logged so far (the latest of each, as Lightning's `callback_metrics`): whether to stop."""
        if not (self.on_train_epoch_end or validated):
            return False
        p = self.params
        if p.monitor not in metrics:
            if p.strict:   # Lightning's RuntimeError, word for word
                raise RuntimeError(f"Early stopping conditioned on metric `{p.monitor}` which is not available. Pass "
                                   f"in or modify your `EarlyStopping` callback to use any of the following: "
                                   f"`{'`, `'.join(metrics)}`")
            return False
        current = torch.tensor(metrics[p.monitor], dtype=torch.float32)   # as Lightning logs it
        stop, message = self._evaluate(current)
        if stop:
            self.stopped_epoch, self.message = epoch, message
        if message and p.verbose and master:
            print(message, file=sys.stderr)   # Lightning logs it at INFO level
        return stop

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, Optional[str]]:
        p, better = self.params, self.better
        sign = '>' if p.mode == 'max' else '<'
        if p.check_finite and not torch.isfinite(current):
            self.reason = REASONS['non-finite metric']
            return True, (f'Monitored metric {p.monitor} = {current} is not finite. Previous best value was '
                          f'{self.best_score:.3f}. Signaling Trainer to stop.')
        if p.stopping_threshold is not None and better(current, p.stopping_threshold):
            self.reason = REASONS['stopping threshold']
            return True, (f'Stopping threshold reached: {p.monitor} = {current} {sign} {p.stopping_threshold}. '
                          f'Signaling Trainer to stop.')
        if p.divergence_threshold is not None and better(-current, -p.divergence_threshold):
            self.reason = REASONS['divergence threshold']
            return True, (f'Divergence threshold reached: {p.monitor} = {current} {sign} {p.divergence_threshold}. '
                          f'Signaling Trainer to stop.')
        if better(current - self.min_delta, self.best_score):
            message = (f'Metric {p.monitor} improved by {abs(self.best_score - current):.3f} >= min_delta = '
                       f'{abs(self.min_delta)}. New best score: {current:.3f}' if torch.isfinite(self.best_score)
                       else f'Metric {p.monitor} improved. New best score: {current:.3f}')
            self.best_score, self.wait_count = current, 0
            return False, message
        self.wait_count += 1
        if self.wait_count >= p.patience:
            self.reason = REASONS['patience exhausted']
            return True, (f'Monitored metric {p.monitor} did not improve in the last {self.wait_count} records. '
                          f'Best score: {self.best_score:.3f}. Signaling Trainer to stop.')
        return False, None

    def state_dict(self) -> dict[str, Any]:
        """Lightning's EarlyStopping state, key for key."""
        return {'wait_count': self.wait_count, 'stopped_epoch': self.stopped_epoch, 'best_score': self.best_score,
                'patience': self.params.patience, 'stopping_reason': self.reason,
                'stopping_reason_message': self.message}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.wait_count, self.stopped_epoch = state['wait_count'], state['stopped_epoch']
        self.best_score, self.params.patience = state['best_score'], state['patience']
        self.reason, self.message = state.get('stopping_reason', 0), state.get('stopping_reason_message')
