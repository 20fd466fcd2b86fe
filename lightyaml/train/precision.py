"""`trainer_params.precision` as Lightning means it, for train.py's steps. Lightning-free.

The same rules as Lightning's precision plugins, so a config trains alike in both entry points:
- `32-true` (`32`, '32'): nothing changes;
- `16-mixed` (`16`, '16') and `bf16-mixed` ('bf16'): the forward and loss under `torch.autocast`
  (without its cast cache, as Lightning's MixedPrecision), float16 with a gradient scaler; on the CPU
  `16-mixed` becomes `bf16-mixed` with a warning, as Lightning does (float16 autocast is for GPUs);
- `64-true` (`64`, '64'), `bf16-true`, `16-true`: the module and the floating-point inputs
  converted to that dtype, and it is the default dtype during the forward (DoublePrecision,
  HalfPrecision).
Lightning's `transformer-engine` plugins need Lightning: train.py refuses them by name.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

# Lightning's short names and what they stand for (lightning_fabric's _PRECISION_INPUT_STR_ALIAS_CONVERSION).
ALIASES: dict[Any, str] = {64: '64-true', '64': '64-true', 32: '32-true', '32': '32-true', 16: '16-mixed',
                           '16': '16-mixed', 'bf16': 'bf16-mixed'}
TRUE_DTYPES = {'64-true': torch.float64, 'bf16-true': torch.bfloat16, '16-true': torch.float16}
MIXED_DTYPES = {'bf16-mixed': torch.bfloat16, '16-mixed': torch.float16}


def unified(value: Any) -> str:
    """Lightning's one name for a `precision` value: 32 -> '32-true', 'bf16' -> 'bf16-mixed'."""
    return ALIASES.get(value, value)


class StepPrecision:
    """What one precision does to a training step: the forward's context, the module's and the
    batch's dtypes, and the gradient scaler (float16 only)."""

    def __init__(self, value: Any, device: torch.device, warn: bool = True) -> None:
        self.name = unified(value)
        if self.name == '16-mixed' and device.type == 'cpu':
            if warn:   # Lightning's own fallback, with its reason
                print("warning: trainer_params.precision: '16-mixed' on the CPU: AMP with float16 is not supported "
                      "there; using 'bf16-mixed' instead (as Lightning does)", file=sys.stderr)
            self.name = 'bf16-mixed'
        self.device = device
        self.dtype: Optional[torch.dtype] = TRUE_DTYPES.get(self.name)   # of the module and the inputs
        self.scaler = torch.amp.GradScaler(device.type) if self.name == '16-mixed' else None

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """The context of a step's forward and loss (not its backward, as in Lightning)."""
        if self.name in MIXED_DTYPES:
            with torch.autocast(self.device.type, dtype=MIXED_DTYPES[self.name], cache_enabled=False):
                yield
        elif self.dtype is not None:
            default = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)
            try:
                yield
            finally:
                torch.set_default_dtype(default)
        else:
            yield

    def module(self, module: nn.Module) -> nn.Module:
        """The module in the precision's dtype (`module.to(dtype)`, `module.double()`), in place."""
        if self.dtype is torch.float64:
            return module.double()
        return module.to(dtype=self.dtype) if self.dtype is not None else module

    def batch(self, batch: Any) -> Any:
        """The batch with its floating-point tensors in the precision's dtype (the others as they are)."""
        if self.dtype is None:
            return batch
        if isinstance(batch, torch.Tensor):
            return batch.to(self.dtype) if batch.is_floating_point() else batch
        if isinstance(batch, Mapping):
            return {k: self.batch(v) for k, v in batch.items()}
        if type(batch) in (list, tuple):
            return type(batch)(self.batch(v) for v in batch)
        return batch
