"""Training wrappers: LightningModules that turn specs into a model, loss and optimizers.

Add one: a new file here with `@register('name')` on a `pl.LightningModule`, then name it in
`train_wrapper.name`. Only train_pl.py imports this package.
"""
from utils import WRAPPERS

register, make = WRAPPERS.register, WRAPPERS.make
