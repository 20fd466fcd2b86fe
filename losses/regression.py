"""Regression losses."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from losses import register


@register('mse')
class MeanSquaredError(nn.Module):
    """Mean squared error of `pred` against `batch[target_key]`; also logs the mean absolute error."""

    def __init__(self, target_key: str = 'target') -> None:
        super().__init__()
        self.target_key = target_key

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target = batch[self.target_key].to(pred.dtype).reshape(pred.shape)
        return {'loss': F.mse_loss(pred, target), 'mae': F.l1_loss(pred, target).detach()}
