"""The YAML configs, and the machinery around them: loading.py (safe YAML, `extends`, overrides),
checking.py (validation against signatures), cli.py (the command line both entry points share),
sweep.py (grids of experiments), preflight.py (the first steps before a run) and built_specs.py
(what each built object came from). Lightning-free: train.py uses all of it."""
