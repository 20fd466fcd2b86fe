"""`${key.path}` references between config values, resolved once `extends` and overrides are merged.

    num_classes: ${data_module.args.num_classes}   # the whole value: the referenced value, type kept (int 10)
    name: run-${seed}                              # inside a string: the referenced value's text
    width: ${train_wrapper.args.model_spec.args.hidden.0}   # list items by index
    note: costs $${price}                          # `$${` is a literal `${`

A referenced value may hold references itself; a cycle or a missing key is one ConfigError line
naming the file and key that hold the reference. Inside a YAML flow mapping `{...}` quote the
reference (`{num_classes: '${data_module.args.num_classes}'}`): YAML reads `{` and `}` there.

Our own (about 100 lines) rather than OmegaConf: the YAML is already read by our loader (safe, no
duplicate keys, `1e-3` a float) and only this step was missing; OmegaConf would bring its own
grammar (resolvers, `\\${` escapes), an ANTLR runtime, and errors to translate into our one line.
Lightning-free and torch-free.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from lightyaml.errors import ConfigError, did_you_mean

# `$${` (an escaped, literal `${`) or `${...}` up to the first `}`.
_TOKEN = re.compile(r'\$\$\{|\$\{([^}]*)\}')
_KEY_PATH = re.compile(r'[\w\-]+(\.[\w\-]+)*')
# What references may copy in one config, counted in values and 64-character pieces of text: a
# chain of references that doubles at each step (a "billion laughs" by reference) stops here.
MAX_COPIED = 100_000


def _weight(value: Any) -> int:
    """Values in `value`, a string counting one per 64 characters."""
    if isinstance(value, Mapping):
        return 1 + sum(_weight(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_weight(v) for v in value)
    return 1 + len(value) // 64 if isinstance(value, str) else 1


def has_references(text: str) -> bool:
    """True if a string holds a reference or an escaped `$${`."""
    return '${' in text


class _Resolver:
    """Resolves every string of a config, following references depth first."""

    def __init__(self, data: Mapping, where: Callable[[str], str]) -> None:
        self.data, self.where = data, where
        self.stack: list[str] = []              # keys being resolved, to catch a cycle
        self.done: dict[str, Any] = {}          # resolved values of referenced keys
        self.references: dict[str, str] = {}    # key -> the string with references it held
        self.copied = 0                         # what lookups copied so far (see MAX_COPIED)

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f'{self.where(key)}: {key}: {problem}')

    def resolve(self, value: Any, key: str) -> Any:
        """`value` (found at `key`) with every reference inside it replaced."""
        if key in self.done:
            return self.done[key]
        self.stack.append(key)
        if isinstance(value, Mapping):
            value = {k: self.resolve(v, f'{key}.{k}' if key else str(k)) for k, v in value.items()}
        elif isinstance(value, list):
            value = [self.resolve(v, f'{key}.{i}') for i, v in enumerate(value)]
        elif isinstance(value, str) and has_references(value):
            self.references[key] = value
            value = self.resolve_string(value, key)
        self.stack.pop()
        self.done[key] = value
        return value

    def resolve_string(self, text: str, key: str) -> Any:
        tokens = list(_TOKEN.finditer(text))
        leftover = _TOKEN.sub('', text)
        if '${' in leftover:
            raise self.error(key, f'{text!r}: unterminated reference (a reference is ${{key.path}}; '
                                  f'write $${{ for a literal ${{)')
        if len(tokens) == 1 and tokens[0].group(1) is not None and tokens[0].span() == (0, len(text)):
            return self.lookup(tokens[0].group(1), key)   # the whole value: keep the referenced type
        parts, end = [], 0
        for token in tokens:
            parts.append(text[end:token.start()])
            if token.group(1) is None:   # `$${`
                parts.append('${')
            else:
                value = self.lookup(token.group(1), key)
                if isinstance(value, (Mapping, list)):
                    kind = 'mapping' if isinstance(value, Mapping) else 'list'
                    raise self.error(key, f'${{{token.group(1)}}} holds a {kind}, '
                                          f'which cannot go inside the string {text!r}')
                parts.append('null' if value is None else str(value).lower() if isinstance(value, bool) else str(value))
            end = token.end()
        parts.append(text[end:])
        return ''.join(parts)

    def lookup(self, path: str, key: str) -> Any:
        """The resolved value at `path`, referenced from `key`."""
        path = path.strip()
        if not _KEY_PATH.fullmatch(path):
            raise self.error(key, f'${{{path}}}: expected a dotted key path such as ${{trainer_params.max_epochs}}')
        if path in self.stack:
            cycle = self.stack[self.stack.index(path):] + [path]
            raise self.error(key, f"reference cycle: {' -> '.join(cycle)}")
        node: Any = self.data
        parts = path.split('.')
        for depth, part in enumerate(parts):
            here, parent = '.'.join(parts[:depth + 1]), '.'.join(parts[:depth]) or 'the config'
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise self.error(key, f'${{{path}}}: no item {part} in {parent}, a list of {len(node)}')
                node = node[int(part)]
            elif isinstance(node, Mapping):
                keys = {str(k): k for k in node}
                if part not in keys:
                    raise self.error(key, f'${{{path}}}: no key {part!r} in {parent}{did_you_mean(part, list(keys))}')
                node = node[keys[part]]
            else:
                raise self.error(key, f'${{{path}}}: {parent} is not a section (it holds {node!r})')
            if depth < len(parts) - 1 and isinstance(node, str) and has_references(node):
                if here in self.stack:   # a path through a reference: follow it
                    cycle = [*self.stack[self.stack.index(here):], here]
                    raise self.error(key, f"reference cycle: {' -> '.join(cycle)}")
                node = self.resolve(node, here)
        value = self.resolve(node, path)
        self.copied += _weight(value)
        if self.copied > MAX_COPIED:
            raise self.error(key, f'${{{path}}}: references copy more than {MAX_COPIED:,} values (a reference bomb?)')
        # A copy: the same object twice in the config would give config.yaml YAML anchors.
        return copy.deepcopy(value)


def resolve_references(data: Mapping, where: Callable[[str], str]) -> tuple[dict, dict[str, str]]:
    """(`data` with every `${...}` resolved, {key: the text with references it held}).
    `where(key)` names the file or override that set a key, for the error line."""
    resolver = _Resolver(data, where)
    return resolver.resolve(dict(data), ''), resolver.references


def escape_references(value: Any) -> Any:
    """`value` with every `${` in its strings written `$${`, so that a resolved config written to a
    file (config.yaml) reads back as the same values."""
    if isinstance(value, Mapping):
        return {k: escape_references(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_references(v) for v in value]
    if isinstance(value, str):
        return value.replace('${', '$${')
    return value
