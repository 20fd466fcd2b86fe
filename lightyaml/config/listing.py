"""`--list` without importing torch or Lightning: the names a registry would give, read from the
packages' source files and from a cache of the libraries' classes. Lightning-free and torch-free."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from lightyaml import registry as registries
from lightyaml.errors import ConfigError, did_you_mean
from lightyaml.registry import REGISTRIES, Registry


def listed_names(registry: Registry) -> list[str]:
    """`registry.names()`, read without importing where that gives the same answer: a package's
    `@register('name')` decorators from its source files (a file that registers in any other way is
    imported), a library's names from a cache made by importing it once per installed version."""
    if registry.package is None:   # a library's classes (ClassNamespace) or a model zoo (torchvision, timm)
        return _cached_names(registry) + (listed_names(registry.fallback) if registry.fallback else [])
    names = None if registry._imported else _names_in_source(registry)
    if names is None:
        return registry.names()
    own = sorted(set(names) | set(registry._classes))   # + any registered at run time
    return own + (listed_names(registry.fallback) if registry.fallback else [])


def _register_aliases(package_init: Path) -> dict[str, str]:
    """{'register': 'DATASETS', 'register_logger': 'LOGGERS', ...} from `x = REGISTRY.register` lines."""
    aliases = {}
    for node in ast.parse(package_init.read_text(encoding='utf-8')).body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            both_tuples = isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
            pairs = (zip(target.elts, node.value.elts) if both_tuples
                     else [(target, node.value)])
            for name, value in pairs:
                if (isinstance(name, ast.Name) and isinstance(value, ast.Attribute) and value.attr == 'register'
                        and isinstance(value.value, ast.Name)):
                    aliases[name.id] = value.value.id
    return aliases


def _names_in_source(registry: Registry) -> Optional[list[str]]:
    spec = importlib.util.find_spec(registry.package)   # imports the parent package only (light)
    variables = {name for name, value in vars(registries).items() if value is registry}   # e.g. {'DATASETS'}
    folder = Path(spec.submodule_search_locations[0])
    aliases = _register_aliases(folder / '__init__.py')
    names = []
    for module in pkgutil.iter_modules([str(folder)]):
        if module.ispkg or module.name.startswith('_'):
            continue
        path = folder / f'{module.name}.py'
        if not path.is_file():
            return None
        try:
            tree = ast.parse(path.read_text(encoding='utf-8'))
        except (SyntaxError, UnicodeDecodeError, ValueError):   # the import says where, in the one line of a run
            return None
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                    a.name.rpartition('.')[2] in aliases and a.asname for a in node.names):
                return None   # a register function under another name: import it to be sure
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in aliases:
                ours = aliases[func.id] in variables
            elif isinstance(func, ast.Attribute) and func.attr == 'register' and isinstance(func.value, ast.Name):
                ours = func.value.id in variables          # @DATASETS.register('x'); not atexit.register(f)
            elif isinstance(func, ast.Attribute) and func.attr in aliases:
                ours = aliases[func.attr] in variables     # @callbacks.register_logger('x')
            else:
                continue
            literal = node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            if ours and not literal:
                return None
            if ours:
                names.append(node.args[0].value)
    return names


def _cached_names(registry: Registry) -> list[str]:
    """The registry's own names (not its fallback's), cached by the version of the library they come from."""
    module = registry.module   # whose version the names depend on
    try:
        version = importlib.metadata.version(module.partition('.')[0])
    except importlib.metadata.PackageNotFoundError:
        return registry.names(fallback=False)
    try:
        cache_dir = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'lightyaml'
    except RuntimeError:   # HOME unset and a uid with no account (a container's --user): list without the cache
        return registry.names(fallback=False)
    cache = cache_dir / (f'{type(registry).__name__}-{module}-{version}-'
                         f'py{sys.version_info[0]}.{sys.version_info[1]}.json')
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    names = registry.names(fallback=False)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f'{cache.name}.{os.getpid()}.tmp')
        tmp.write_text(json.dumps(names))
        os.replace(tmp, cache)
    except OSError:   # a read-only home: list without the cache
        pass
    return names


def list_registered(kinds: Sequence[str] = ()) -> str:
    """Text listing every registered name, for `--list [kind]`. It imports neither Lightning nor
    torch when it can help it (lightyaml/config/listing.py), so that it answers in a fraction of a second."""
    unknown = [k for k in kinds if k not in REGISTRIES]
    if unknown:
        raise ConfigError(f'--list {unknown[0]}: no such registry{did_you_mean(unknown[0], list(REGISTRIES))}; '
                          f'registries: {", ".join(REGISTRIES)}')
    lines = []
    for kind in kinds or REGISTRIES:
        lines.append(f'{kind}: {", ".join(listed_names(REGISTRIES[kind]))}')
    return '\n'.join(lines)
