"""The small top-level sections, checked like every other (lightyaml/config/checking.py calls
these): `predict` (what --predict writes) and `init_from` (how --init-from renames weights).
Lightning-free and torch-free."""
from __future__ import annotations

from collections.abc import Mapping

from lightyaml.config.loading import Config
from lightyaml.errors import did_you_mean

PREDICT_KEYS = ('classify',)   # the `predict` section: what --predict writes (lightyaml/run/results.py)
INIT_FROM_KEYS = ('strip_prefix', 'add_prefix')   # `init_from`: how --init-from maps a file's weight names


def check_predict_section(cfg: Config, problems: list[str]) -> None:
    """`predict: {classify: true}`: whether predictions.csv gives classes and probabilities (true) or
    the output values (false); left out, --predict decides from the config (lightyaml/run/results.py)."""
    section = cfg.get('predict')
    if section is None:
        return
    if not isinstance(section, Mapping):
        problems.append(cfg.error('predict', f'expected a mapping such as {{classify: true}}, got '
                                             f'{type(section).__name__} {section!r}'))
        return
    for key, value in section.items():
        if key not in PREDICT_KEYS:
            problems.append(cfg.error(f'predict.{key}', f'the predict section has no key {key!r}'
                                                        f'{did_you_mean(str(key), PREDICT_KEYS)}; keys: '
                                                        f"{', '.join(PREDICT_KEYS)}"))
        elif value is not None and not isinstance(value, bool):
            problems.append(cfg.error(f'predict.{key}', f'expected true (classes and probabilities) or false '
                                                        f'(the output values), got {value!r}'))


def check_init_from_section(cfg: Config, problems: list[str]) -> None:
    """`init_from: {strip_prefix: net., add_prefix: model.}`: how --init-from renames the weights of
    a file from elsewhere (lightyaml/run/checkpoint_files.py's `load_weights`)."""
    section = cfg.get('init_from')
    if section is None:
        return
    if not isinstance(section, Mapping):
        problems.append(cfg.error('init_from', f'expected a mapping such as {{strip_prefix: net., add_prefix: '
                                               f'model.}}, got {type(section).__name__} {section!r}'))
        return
    for key, value in section.items():
        if key not in INIT_FROM_KEYS:
            problems.append(cfg.error(f'init_from.{key}', f'the init_from section has no key {key!r}'
                                                          f'{did_you_mean(str(key), INIT_FROM_KEYS)}; keys: '
                                                          f"{', '.join(INIT_FROM_KEYS)}"))
        elif value is not None and not isinstance(value, str):
            problems.append(cfg.error(f'init_from.{key}', f'expected a prefix of weight names such as '
                                                          f"'model.', got {value!r}"))
