"""Plain `nn.Module` models: `forward` takes the batch dict and returns the prediction.

Add a model: a new file here with `@register('name')` on the class. Training wrappers
(LightningModules) live in `models/wrappers/`, which train.py never imports.
"""
from utils import MODELS

register, make = MODELS.register, MODELS.make
