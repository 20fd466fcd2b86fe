"""Lightning callbacks named in a config's `callbacks` list (BaseLogger is always on), and
Lightning loggers of your own for its `loggers` list.

Add one: a new file here with `@register('name')` on a `pl.Callback`, or `@register_logger('name')`
on a `pytorch_lightning.loggers.Logger`. Only train_pl.py imports this package's Lightning files;
train.py uses its Lightning-free ones (experiment_dir, metrics_files, checkpoint_files, results,
trackers, sample_grid).
"""
from utils import CALLBACKS, LOGGERS

register, make = CALLBACKS.register, CALLBACKS.make
register_logger = LOGGERS.register
