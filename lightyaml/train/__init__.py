"""The training pieces both entry points share: the task, optimizers, EMA, lazy modules, the
preflight, and (train_pl.py only) the Lightning side in lightning.py. Must not import launch/."""
