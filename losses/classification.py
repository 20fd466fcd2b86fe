"""Classification losses."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from losses import register


@register('ce')
class CrossEntropy(nn.Module):
    """Cross-entropy of logits `pred` against `batch[target_key]` (class indices)."""

    classifies = True   # --predict writes each sample's class and probability (lightyaml/run/results.py)

    def __init__(self, target_key: str = 'label', label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.target_key, self.label_smoothing = target_key, label_smoothing

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {'loss': F.cross_entropy(pred, batch[self.target_key], label_smoothing=self.label_smoothing)}
