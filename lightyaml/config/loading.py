"""Reading a config: safe YAML, `extends`, dotted overrides, `${...}` references (resolved last,
lightyaml/config/references.py), and where each key was set.

Lightning-free and torch-free. Validation is in lightyaml/config/checking.py.
"""
from __future__ import annotations

import copy
import datetime
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from lightyaml.config.references import escape_references, resolve_references
from lightyaml.errors import ConfigError, display_path
from lightyaml.process import global_rank_from_env

EXTENDS_KEY = 'extends'

_FLOAT_1_2 = re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$')


# Limits that keep a hostile or broken document fast and small (a real config is far below both).
MAX_NODES = 100_000   # values in one document, counting each alias expansion (a "billion laughs" stops here)
MAX_DEPTH = 64        # nesting levels of mappings and lists
MAX_FILE_BYTES = 2 * 2**20   # a config is a few kB; pure-Python YAML reads about 1 MB/s
_MERGE_TAG = 'tag:yaml.org,2002:merge'
# What a config value may be: what `yaml.safe_dump` writes back as the same value.
_PLAIN = (str, int, float, bool, type(None), datetime.date, bytes)


class _Loader(yaml.SafeLoader):
    """Safe YAML with four fixes: `1e-3` is a float (YAML 1.2), a duplicated key is an error, a key
    that is a list or mapping is an error (not a TypeError), and nesting stops at MAX_DEPTH levels
    as it is read (not as a RecursionError after the whole text was scanned)."""

    _depth = 0

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f'{self.name}:{mark.line + 1}: nested more than {MAX_DEPTH} levels deep')
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:   # `<<: *base`, resolved by flatten_mapping below
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                problem = f'a key must be a plain value, not a {type(key).__name__}'
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key {key!r}', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver('tag:yaml.org,2002:float', _FLOAT_1_2, list('-+0123456789'))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_size(root: yaml.Node, where: str) -> None:
    """Refuse a document that is too deep, recursive, or too big once its aliases are expanded.

    Measured on the composed node graph, where an alias is one shared node, so the cost is linear
    in the text even for a document that would expand to billions of values."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    ancestors: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            ancestors.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if depth[key] > MAX_DEPTH:
                raise ConfigError(f'{where}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep')
            if size[key] > MAX_NODES:
                raise ConfigError(f'{where}: more than {MAX_NODES:,} values once its aliases are expanded '
                                  f'(an alias bomb?)')
            continue
        if key in size:
            continue
        if key in ancestors:
            raise ConfigError(f'{where}:{node.start_mark.line + 1}: an alias refers to a value that contains it '
                              f'(a recursive structure)')
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _unshare(data: Any, where: str, path: str = '') -> Any:
    """A tree of fresh dicts and lists: every alias becomes its own copy, so that an override of
    `val` can never change the `train` it was aliased from. Refuses YAML types a config cannot hold."""
    if isinstance(data, dict):
        return {k: _unshare(v, where, f'{path}.{k}' if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_unshare(v, where, f'{path}.{i}' if path else str(i)) for i, v in enumerate(data)]
    if not isinstance(data, _PLAIN):
        kind = {set: '!!set', tuple: '!!omap or !!pairs'}.get(type(data), type(data).__name__)
        raise ConfigError(f"{where}: {path or 'the document'}: a YAML {kind} cannot be a config value; "
                          f"use a list or a mapping")
    return data


def parse_yaml(text: str, where: str) -> Any:
    """Safe-load one YAML document; a syntax error, python tag, alias bomb, or too deep a nesting
    is a one-line ConfigError. Aliased values come back as independent copies."""
    loader = None
    try:
        loader = _Loader(text)   # its reader refuses control characters here
        loader.name = where
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, where)
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        at = f':{mark.line + 1}:{mark.column + 1}' if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        if problem.startswith('but ') and getattr(e, 'context', None):   # "but found another document"
            problem = f'{e.context}, {problem}'
        raise ConfigError(f'{where}{at}: invalid YAML: {problem}') from None
    except RecursionError:   # the composer recurses once per level, before _check_size can count them
        raise ConfigError(f'{where}: nested more than {MAX_DEPTH} levels deep') from None
    except (ValueError, OverflowError) as e:   # a date such as 2001-13-01, an integer of 5,000 digits
        raise ConfigError(f'{where}: invalid YAML: {str(e).splitlines()[0][:120]}') from None
    finally:
        if loader is not None:
            loader.dispose()
    return _unshare(data, where)


def read_text_file(path: Path, shown: str) -> str:
    """A config file's text; a binary, non-UTF-8, huge or unreadable file is a one-line ConfigError."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f'{shown}: {path.stat().st_size:,} bytes is too big for a config file '
                              f'(at most {MAX_FILE_BYTES:,})')
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f'{shown}: cannot read it ({e.strerror or e})') from None
    if b'\0' in raw:
        raise ConfigError(f'{shown}: a binary file, not a YAML config')
    try:
        return raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        raise ConfigError(f'{shown}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); '
                          f'save it as UTF-8') from None


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
    data = parse_yaml(read_text_file(path, shown), shown)
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


DECIDED_AT_START = ('seed', 'threads')   # drawn or chosen when a run starts if the config leaves them unset


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


def config_differences(old: Any, new: Any, ignore_decided: bool = False, prefix: str = '') -> list[str]:
    """Where two configs differ, as `key.path: OLD then, NEW now` lines (values compared after a
    YAML round trip, so `1e-3` and `0.001` are equal). `ignore_decided`: a seed or thread count left
    unset now matches whatever the run decided then."""
    if not prefix:
        old, new = (yaml.safe_load(dump_yaml(dict(v) if isinstance(v, Mapping) else v)) for v in (old, new))
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in [*old, *(k for k in new if k not in old)]:
            if ignore_decided and not prefix and key in DECIDED_AT_START and new.get(key) is None:
                continue
            path = f'{prefix}.{key}' if prefix else str(key)
            found += config_differences(old.get(key, '(absent)'), new.get(key, '(absent)'), ignore_decided, path)
        return found
    return [] if old == new else [f'{prefix}: {_brief(old)} then, {_brief(new)} now']


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else dump_yaml(value).strip().removesuffix('...').strip()
    return text if len(text) <= 60 else text[:57] + '...'
