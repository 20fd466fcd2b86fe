"""A run's experiment folder and its files: lock, config.yaml, metrics, checkpoints, results,
trackers, export. Lightning-free; must not import train/ or launch/."""
