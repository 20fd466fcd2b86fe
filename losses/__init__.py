"""Losses: `loss(pred, batch)` returns a dict with the `loss` to minimise plus any terms to log.

Add one: a new file here with `@register('name')` on an `nn.Module`.
"""
from utils import LOSSES

register, make = LOSSES.register, LOSSES.make
