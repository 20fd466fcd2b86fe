"""Training wrappers: LightningModules that turn specs into a model, loss and optimizers.

Add one: a new file here with `@register('name')` on a `pl.LightningModule` (or on
`WrapperModule`, which is one with a per-step cost removed), then name it in
`train_wrapper.name`. Only train_pl.py imports this package.
"""
from typing import Any

import pytorch_lightning as pl

from utils import WRAPPERS

register, make = WRAPPERS.register, WRAPPERS.make


class WrapperModule(pl.LightningModule):
    """A LightningModule that sets `_current_fx_name` directly. Lightning sets it around every
    hook it calls, about 30 times a step, and nn.Module's `__setattr__` (which looks for
    parameters, buffers and submodules first) makes that 0.06 ms a step on a CPU."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == '_current_fx_name':
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
