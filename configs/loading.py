"""Reading a config: safe YAML, `extends`, dotted overrides, `${...}` references (resolved last,
configs/references.py), and where each key was set.

Lightning-free and torch-free. Validation is in configs/checking.py.
"""
from __future__ import annotations

import copy
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from configs.references import escape_references, resolve_references
from utils import ConfigError, display_path, global_rank_from_env

EXTENDS_KEY = 'extends'

_FLOAT_1_2 = re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$')


class _Loader(yaml.SafeLoader):
    """Safe YAML with two fixes: `1e-3` is a float (YAML 1.2), and a duplicated key is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key {key!r}', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver('tag:yaml.org,2002:float', _FLOAT_1_2, list('-+0123456789'))


def parse_yaml(text: str, where: str) -> Any:
    """Safe-load one YAML document; a syntax error or python tag is a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        at = f':{mark.line + 1}:{mark.column + 1}' if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise ConfigError(f'{where}{at}: invalid YAML: {problem}') from None


class Config(dict):
    """The merged config, plus where each key was set (a file, or the command line) and, for a key
    whose value came from references, the text it held (`${trainer_params.max_epochs}`)."""

    def __init__(self, data: Mapping, origins: Mapping[str, str], references: Mapping[str, str] = {}) -> None:
        super().__init__(data)
        self.origins = dict(origins)
        self.references = dict(references)

    def where(self, key: str) -> str:
        """The file (or override) that set `key` or its closest parent section."""
        key = str(key)  # YAML keys may be numbers: `1e0: x`
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key.rpartition('.')[0]
        return self.origins.get('', 'config')

    def error(self, key: str, problem: str) -> str:
        """One line: `file: key.path: problem`."""
        return f'{self.where(key)}: {problem}' if key == '' else f'{self.where(key)}: {key}: {problem}'


def _record_origins(data: Any, where: str, origins: dict[str, str], prefix: str = '') -> None:
    if prefix:
        origins[prefix] = where
    if isinstance(data, Mapping):
        for k, v in data.items():
            _record_origins(v, where, origins, f'{prefix}.{k}' if prefix else str(k))


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """A copy of `base` with `update` merged in: mappings merge key by key, anything else replaces.

    A spec whose `name` changes is replaced whole: `mlp`'s args must not leak into `lenet5`.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = merged.get(key)
        if (isinstance(value, Mapping) and isinstance(old, Mapping)
                and not ('name' in value and 'name' in old and value['name'] != old['name'])):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_config_file(path: Path, origins: dict[str, str], chain: tuple[Path, ...] = ()) -> dict:
    """Load `path` and the files it `extends` (relative to it), merged, recording origins."""
    shown = display_path(path)
    if path in chain:
        raise ConfigError(f"{shown}: {EXTENDS_KEY}: circular: {' -> '.join(display_path(p) for p in chain + (path,))}")
    if not path.is_file():
        raise ConfigError(f'{shown}: config file not found')
    data = parse_yaml(path.read_text(), shown)
    if data is None:
        raise ConfigError(f'{shown}: the config file is empty')
    if not isinstance(data, Mapping):
        raise ConfigError(f'{shown}: a config must be a mapping of sections, not a {type(data).__name__}')
    parents = data.pop(EXTENDS_KEY, None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f'{shown}: {EXTENDS_KEY}: expected a file name or a list of file names')
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, _read_config_file((path.parent / parent).resolve(), origins, chain + (path,)))
    _record_origins(data, shown, origins)
    return deep_merge(merged, data)

def apply_override(data: dict, override: str, origins: dict[str, str]) -> None:
    """Apply one `key.path=value` (value parsed as YAML) in place; list items are addressed by index."""
    key, sep, text = override.partition('=')
    where = f'override {override!r}'
    if not sep or not key or any(not part for part in key.split('.')):
        raise ConfigError(f'{where}: expected key.path=value, e.g. trainer_params.max_epochs=3')
    value = parse_yaml(text, where) if text.strip() else None
    *parents, last = key.split('.')
    node: Any = data
    for depth, part in enumerate(parents + [last]):
        here = '.'.join((parents + [last])[:depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f'{where}: {here}: no item {part} in a list of {len(node)}')
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{where}: {here.rpartition('.')[0]} is not a section (it holds {node!r})")
        if depth == len(parents):
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
                origins[here] = where
            node = node[part]
    _record_origins(value, where, origins, key)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Load a config file (following `extends`), apply dotted overrides, then resolve `${...}`
    references, so that a reference sees the overridden value. No validation."""
    origins: dict[str, str] = {}
    data = _read_config_file(Path(path).resolve(), origins)
    origins[''] = display_path(Path(path).resolve())
    for override in overrides:
        apply_override(data, override, origins)
    resolved, references = resolve_references(data, Config(data, origins).where)
    return Config(resolved, origins, references)


def resolve_seed(cfg: dict) -> Any:
    """The config's seed; if it has none, one drawn now. Rank 0 exports it so the processes
    Lightning's DDP launcher starts (which inherit the environment) use the same one."""
    if cfg.get('seed') is None:
        inherited = os.environ.get('LIGHTYAML_SEED') if global_rank_from_env() > 0 else None
        cfg['seed'] = int(inherited) if inherited else random.SystemRandom().randrange(2**31)
    if isinstance(cfg['seed'], int) and not isinstance(cfg['seed'], bool) and cfg['seed'] >= 0:
        os.environ['LIGHTYAML_SEED'] = str(cfg['seed'])
    return cfg['seed']


def dump_yaml(data: Any) -> str:
    """YAML text for a plain config, in the order it was written."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def _flow(value: Any) -> str:
    """One value as YAML on one line (flow style), e.g. `[512]`, `{name: ce}`, `'a: b'`."""
    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=float('inf')).strip()[1:-1]


def dump_with_origins(cfg: Config) -> str:
    """The config as YAML, each key followed by a comment naming the file or override that set it
    (and the references its value came from): what `--print-config` shows. It loads as a config."""
    rows: list[tuple[str, str]] = []

    def origin(key: str, leaf: bool) -> str:
        # A list or flow value may have items set by overrides (`callbacks.0.args.x=1`): name them too.
        found = [cfg.where(key)] + ([o for k, o in cfg.origins.items() if k.startswith(f'{key}.')] if leaf else [])
        text = ', '.join(dict.fromkeys(found))
        refs = [r for k, r in cfg.references.items() if k == key or (leaf and k.startswith(f'{key}.'))]
        return text + ''.join(f' ({r})' for r in refs)

    def emit(data: Mapping, prefix: str, indent: int) -> None:
        for k, v in data.items():
            key = f'{prefix}.{k}' if prefix else str(k)
            if isinstance(v, Mapping) and v:
                rows.append((' ' * indent + f'{_flow(k)}:', origin(key, leaf=False)))
                emit(v, key, indent + 2)
            else:
                rows.append((' ' * indent + f'{_flow(k)}: {_flow(escape_references(v))}', origin(key, leaf=True)))

    emit(cfg, '', 0)
    width = min(max(len(text) for text, _ in rows) + 2, 72) if rows else 0
    return '\n'.join(f'{text.ljust(width)}# {where}' for text, where in rows)


def config_differences(old: Any, new: Any, ignore_seed: bool = False, prefix: str = '') -> list[str]:
    """Where two configs differ, as `key.path: OLD then, NEW now` lines (values compared after a
    YAML round trip, so `1e-3` and `0.001` are equal). `ignore_seed`: a seed left unset now
    matches whatever seed was drawn then."""
    if not prefix:
        old, new = (yaml.safe_load(dump_yaml(dict(v) if isinstance(v, Mapping) else v)) for v in (old, new))
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in [*old, *(k for k in new if k not in old)]:
            if ignore_seed and not prefix and key == 'seed' and new.get('seed') is None:
                continue
            path = f'{prefix}.{key}' if prefix else str(key)
            found += config_differences(old.get(key, '(absent)'), new.get(key, '(absent)'), ignore_seed, path)
        return found
    return [] if old == new else [f'{prefix}: {_brief(old)} then, {_brief(new)} now']


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else dump_yaml(value).strip().removesuffix('...').strip()
    return text if len(text) <= 60 else text[:57] + '...'
