"""The small top-level sections, checked like every other (lightyaml/config/checking.py calls
`check_small_sections`): `predict` (what --predict writes) and `init_from` (how --init-from renames
weights). Lightning-free and torch-free."""
from __future__ import annotations

from collections.abc import Mapping

from lightyaml.config.loading import Config
from lightyaml.errors import did_you_mean

# Each section: an example for the error line, its keys, the type of their values and what that is.
SECTIONS = {
    # what predictions.csv holds (lightyaml/run/results.py); left out, --predict decides from the config
    'predict': ('{classify: true}', {'classify': bool},
                'true (classes and probabilities) or false (the output values)'),
    # how --init-from renames a file's weights (lightyaml/run/checkpoint_files.py's `load_weights`)
    'init_from': ('{strip_prefix: net., add_prefix: model.}', {'strip_prefix': str, 'add_prefix': str},
                  "a prefix of weight names such as 'model.'"),
}


def check_small_sections(cfg: Config, problems: list[str]) -> None:
    """Each section of SECTIONS that the config has: a mapping of its keys, each null or of its type."""
    for name, (example, keys, expected) in SECTIONS.items():
        section = cfg.get(name)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(cfg.error(name, f'expected a mapping such as {example}, got '
                                            f'{type(section).__name__} {section!r}'))
            continue
        for key, value in section.items():
            if key not in keys:
                problems.append(cfg.error(f'{name}.{key}', f'the {name} section has no key {key!r}'
                                                           f'{did_you_mean(str(key), list(keys))}; keys: '
                                                           f"{', '.join(keys)}"))
            elif value is not None and not isinstance(value, keys[key]):
                problems.append(cfg.error(f'{name}.{key}', f'expected {expected}, got {value!r}'))
