"""Launching: the command line and its plan, sweeps, Optuna searches, SLURM scripts, the console.
The top of the engine: nothing else in lightyaml imports it."""
