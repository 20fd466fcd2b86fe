"""The engine both entry points share: config language, command line and launching, the experiment
folder and its files, the training pieces. It must not import the entry points, utils.py or the
card's folders (callbacks/, models/, datasets/, losses/): it reaches those only by name, through a
registry. Its layers, top to bottom (pyproject.toml's import contract): launch, train, run, config,
then registry, built_specs, errors and process."""
