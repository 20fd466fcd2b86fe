"""The YAML configs, and the machinery around them: loading.py (safe YAML, `extends`, overrides),
checking.py (validation against signatures), cli.py (the command line both entry points share)
and sweep.py (grids of experiments). Lightning-free: train.py uses all of it."""
