"""Lightning callbacks named in a config's `callbacks` list (BaseLogger is always on).

Add one: a new file here with `@register('name')` on a `pl.Callback`. Only train_pl.py imports
this package.
"""
from utils import CALLBACKS

register, make = CALLBACKS.register, CALLBACKS.make
