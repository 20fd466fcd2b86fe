"""The small top-level sections, checked like every other (lightyaml/config/checking.py calls
`check_small_sections`): `predict` (what --predict writes), `init_from` (how --init-from renames
weights), `scale_lr` (learning rates scaled with the global batch) and `sharding` (train.py's FSDP2
path). Lightning-free and torch-free."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lightyaml.config.loading import Config
from lightyaml.errors import did_you_mean


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# Each section: an example for the error line, its required keys, and each key's test and what it wants.
SECTIONS: dict[str, tuple[str, tuple[str, ...], dict[str, tuple[Callable[[Any], bool], str]]]] = {
    # what predictions.csv holds (lightyaml/run/results.py); left out, --predict decides from the config
    'predict': ('{classify: true}', (), {
        'classify': (lambda v: isinstance(v, bool), 'true (classes and probabilities) or false (the output values)')}),
    # how --init-from renames a file's weights (lightyaml/run/checkpoint_files.py's `load_weights`)
    'init_from': ('{strip_prefix: net., add_prefix: model.}', (), {
        'strip_prefix': (lambda v: isinstance(v, str), "a prefix of weight names such as 'model.'"),
        'add_prefix': (lambda v: isinstance(v, str), "a prefix of weight names such as 'model.'")}),
    # learning rates x global batch / base_batch (lightyaml/train/optim.py's `lr_scale`); `factor` is recorded
    'scale_lr': ('{base_batch: 256}', ('base_batch',), {
        'base_batch': (_whole, 'the batch size the learning rates are given for, a whole number >= 1'),
        'factor': (_number, 'a positive number (the run records it; it is worked out again each time)')}),
    # train.py's FSDP2 path (lightyaml/train/sharding.py): the module classes sharded as units of their own
    'sharding': ('{wrap: [torch.nn.Linear]}', (), {
        'wrap': (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                 'a list of module class names, dotted (torch.nn.Linear) or of the model\'s own classes (Block)')}),
}


def check_small_sections(cfg: Config, problems: list[str]) -> None:
    """Each section of SECTIONS that the config has: a mapping of its keys, each null or passing its test."""
    for name, (example, required, keys) in SECTIONS.items():
        section = cfg.get(name)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(cfg.error(name, f'expected a mapping such as {example}, got '
                                            f'{type(section).__name__} {section!r}'))
            continue
        problems += [cfg.error(name, f'needs {key!r}, e.g. {example}') for key in required if section.get(key) is None]
        for key, value in section.items():
            if key not in keys:
                problems.append(cfg.error(f'{name}.{key}', f'the {name} section has no key {key!r}'
                                                           f'{did_you_mean(str(key), list(keys))}; keys: '
                                                           f"{', '.join(keys)}"))
            elif value is not None and not keys[key][0](value):
                problems.append(cfg.error(f'{name}.{key}', f'expected {keys[key][1]}, got {value!r}'))
