"""The training pieces both entry points share: the task, optimizers, EMA, lazy modules, the preflight, Lightning's checkpoint writer. Must not import launch/."""
