"""Lightning-free building blocks shared by `train_pl.py` and `train.py`.

Sections, top to bottom:
  errors      ConfigError, the one exception a user's input can cause (printed, exit status 2)
  registries  Registry, ClassNamespace and every extension point of the template, one line each
  config      safe YAML loading, `extends`, dotted overrides, validation against signatures
  training    optimizers, schedulers, metrics, seeding, running means
  experiment  the experiment folder: names, config.yaml, src/, git, log.txt, metrics.csv, TensorBoard
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import difflib
import importlib
import inspect
import itertools
import os
import pkgutil
import random
import re
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------- errors

class ConfigError(Exception):
    """Something the user can fix: each problem is one line naming the file, key path and a fix."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))


class NonFiniteLossError(Exception):
    """Training produced a NaN or infinite loss term; the run stops, its last checkpoint stays."""

    def __init__(self, epoch: int, first_step: int, last_step: int, terms: Sequence[str]) -> None:
        steps = f'step {last_step}' if first_step >= last_step else f'steps {first_step} and {last_step}'
        super().__init__(f"non-finite training loss in epoch {epoch} (between {steps}): "
                         f"{', '.join(terms)} became NaN or infinite; training stopped, the last good "
                         f"checkpoint is kept")


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """' (did you mean 'x' or 'y'?)' for the closest candidates, or ''."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)" if matches else ''


# ------------------------------------------------------------------------------------- registries

class Registry:
    """Names -> classes, filled by `@register('name')` in the files of one package.

    Every module file of `package` is imported the first time the registry is asked for a name,
    so a new file with the decorator is found with no other edit.
    """

    def __init__(self, kind: str, package: Optional[str] = None, fallback: Optional['Registry'] = None,
                 check: Optional[Callable[..., None]] = None) -> None:
        self.kind = kind
        self.package = package
        self.fallback = fallback   # looked up for names this registry does not have
        self.check = check         # rules of this kind's specs beyond the signature: (spec, key, cfg, problems)
        self._classes: dict[str, Any] = {}
        self._imported = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@register('mlp')` makes the class buildable as `{name: mlp, args: ...}`."""
        def decorator(obj: Any) -> Any:
            old = self._classes.get(name)
            if old is not None and _defined_at(old) != _defined_at(obj):
                raise ValueError(f"{self.kind} '{name}' is registered twice: "
                                 f"{_defined_at(old)} and {_defined_at(obj)}")
            self._classes[name] = obj
            return obj
        return decorator

    def _import_package(self) -> None:
        if self._imported or self.package is None:
            return
        self._imported = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.ispkg and not module.name.startswith('_'):
                importlib.import_module(f'{self.package}.{module.name}')

    def names(self) -> list[str]:
        """Every registered name, sorted (this registry's first, then its fallback's)."""
        self._import_package()
        return sorted(self._classes) + (self.fallback.names() if self.fallback else [])

    def get(self, name: str) -> Any:
        """The class registered as `name`; an unknown name is a ConfigError with close matches."""
        self._import_package()
        if name not in self._classes and self.fallback and name in self.fallback.names():
            return self.fallback.get(name)
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                              f"registered: {', '.join(self.names()) or '(none)'}")
        return self._classes[name]

    def make(self, spec: Mapping, args: Optional[Mapping] = None) -> Any:
        """Build `{name, args}`; `args` given here override the spec's. The spec is not changed."""
        kwargs = copy.deepcopy(dict(spec.get('args') or {}))
        kwargs.update(args or {})
        return self.get(spec['name'])(**kwargs)


class ClassNamespace(Registry):
    """A read-only registry over an existing module, e.g. every optimizer in `torch.optim`."""

    def __init__(self, kind: str, module: str, base: str, extra_keys: tuple[str, ...] = (),
                 check: Optional[Callable[..., None]] = None) -> None:
        super().__init__(kind, check=check)
        self.module, self.base, self.extra_keys = module, base, extra_keys

    def _import_package(self) -> None:
        if self._imported:
            return
        self._imported = True
        module = importlib.import_module(self.module)
        base = _import_object(self.base)
        for name in dir(module):
            obj = getattr(module, name)
            if (inspect.isclass(obj) and issubclass(obj, base) and obj is not base
                    and not name.startswith('_')):
                self._classes[name] = obj


def _import_object(dotted: str) -> Any:
    module, _, name = dotted.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _defined_at(obj: Any) -> str:
    try:
        line = inspect.getsourcelines(obj)[1]
        return f'{inspect.getsourcefile(obj)}:{line} ({obj.__module__}.{obj.__qualname__})'
    except (OSError, TypeError):
        return f'{obj.__module__}.{obj.__qualname__}'


def check_scheduler_spec(spec: Any, key: str, cfg: Config, problems: list[str]) -> None:
    """Scheduler-specific rules on top of the generic spec check."""
    if not isinstance(spec, Mapping):
        return
    if spec.get('interval', 'epoch') not in ('epoch', 'step'):
        problems.append(cfg.error(f'{key}.interval', f"expected 'epoch' or 'step', got {spec['interval']!r}"))
    if spec.get('name') == 'ReduceLROnPlateau':
        if not spec.get('monitor'):
            problems.append(cfg.error(f'{key}.monitor', 'ReduceLROnPlateau needs the metric it watches, e.g. monitor: val/loss'))
        if spec.get('warmup'):
            problems.append(cfg.error(f'{key}.warmup', 'warmup cannot be combined with ReduceLROnPlateau'))
    warmup = spec.get('warmup')
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        problems.append(cfg.error(f'{key}.warmup', f'expected a non-negative integer, got {warmup!r}'))



# Every extension point of the template. A package's own `register`/`make` are these objects.
DATASETS = Registry('dataset', 'datasets')
DATA_MODULES = Registry('data module', 'datasets')
MODELS = Registry('model', 'models')
LOSSES = Registry('loss', 'losses')
WRAPPERS = Registry('training wrapper', 'models.wrappers')    # LightningModules: train_pl.py only
CALLBACKS = Registry('callback', 'callbacks',                 # Lightning callbacks: train_pl.py only
                     fallback=ClassNamespace('callback', 'pytorch_lightning.callbacks',   # + its built-ins
                                             'pytorch_lightning.callbacks.Callback'))
OPTIMIZERS = ClassNamespace('optimizer', 'torch.optim', 'torch.optim.Optimizer')
SCHEDULERS = ClassNamespace('scheduler', 'torch.optim.lr_scheduler', 'torch.optim.lr_scheduler.LRScheduler',
                            extra_keys=('interval', 'frequency', 'monitor', 'warmup'), check=check_scheduler_spec)
METRICS = ClassNamespace('metric', 'torchmetrics', 'torchmetrics.Metric')
REGISTRIES = {'datasets': DATASETS, 'data_modules': DATA_MODULES, 'models': MODELS, 'losses': LOSSES,
              'wrappers': WRAPPERS, 'callbacks': CALLBACKS, 'optimizers': OPTIMIZERS,
              'schedulers': SCHEDULERS, 'metrics': METRICS}


class _SpecMarker(typing.NamedTuple):
    registry: str


class Spec:
    """Annotation of an argument that takes a `{name, args}` spec: `model_spec: Spec['models']`.

    The config validator follows these annotations into nested specs.
    """

    def __class_getitem__(cls, registry: str) -> Any:
        return typing.Annotated[dict, _SpecMarker(registry)]


# ----------------------------------------------------------------------------------------- config

TOP_LEVEL_SECTIONS = ('seed', 'data_module', 'train_wrapper', 'trainer_params', 'checkpoint', 'callbacks')
REQUIRED_SECTIONS = ('data_module', 'train_wrapper')
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
    """The merged config, plus where each key was set (a file, or the command line)."""

    def __init__(self, data: Mapping, origins: Mapping[str, str]) -> None:
        super().__init__(data)
        self.origins = dict(origins)

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
    shown = _display_path(path)
    if path in chain:
        raise ConfigError(f"{shown}: {EXTENDS_KEY}: circular: {' -> '.join(_display_path(p) for p in chain + (path,))}")
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


def _display_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith('..') else relative


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
    """Load a config file (following `extends`) and apply dotted overrides. No validation."""
    origins: dict[str, str] = {}
    data = _read_config_file(Path(path).resolve(), origins)
    origins[''] = _display_path(Path(path).resolve())
    for override in overrides:
        apply_override(data, override, origins)
    return Config(data, origins)


# How a value from YAML is checked against an annotation: True fits, False does not, None can't tell.
_BASIC = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,), tuple: (list,),
          dict: (dict,), type(None): (type(None),)}


def _fits(value: Any, annotation: Any) -> Optional[bool]:
    if annotation in (inspect.Parameter.empty, Any) or isinstance(annotation, (str, typing.ForwardRef)):
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _fits(value, args[0])
    if origin in (typing.Union, types.UnionType):
        results = [_fits(value, a) for a in args]
        return True if True in results else (None if None in results else False)
    if origin is typing.Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin is not None:
        annotation = origin
    if annotation in _BASIC:
        return isinstance(value, _BASIC[annotation]) and not (
            isinstance(value, bool) and annotation in (int, float))
    if annotation in (Sequence, list, tuple, Iterable):
        return isinstance(value, list)
    if annotation is Mapping:
        return isinstance(value, dict)
    if inspect.isclass(annotation):
        if isinstance(value, annotation):
            return True
        # YAML yields only plain values: one of those where another class is wanted is wrong.
        return False if isinstance(value, (int, float, str, bool, list, dict)) else None
    return None


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _describe(annotation: Any) -> str:
    """'int', 'float or None', "one of 32, '16-mixed', 'bf16-mixed' or None"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        spec = _spec_registry(annotation)
        return _a(f'{REGISTRIES[spec].kind} spec') if spec else _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        literals = [repr(v) for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [_describe(a) for a in args if typing.get_origin(a) is not typing.Literal]
        return (f"one of {', '.join(literals)}" + ''.join(f' or {o}' for o in others)) if literals else ' or '.join(others)
    if origin is typing.Literal:
        return f"one of {', '.join(repr(v) for v in args)}"
    if annotation is type(None):
        return 'None'
    return getattr(annotation, '__name__', str(annotation).replace('typing.', ''))


def _signature_hints(target: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    signature = inspect.signature(target)
    init = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {name: p.annotation for name, p in signature.parameters.items()}
    return signature, hints


def check_kwargs(target: Any, kwargs: Mapping, key: str, cfg: Config, problems: list[str],
                 what: str, refused: Mapping[str, str] = {}, required: bool = False) -> None:
    """Check `kwargs` against `target`'s signature: unknown names, wrong types, nested specs, and
    (if `required`) missing arguments. Nested specs may get more arguments at run time from
    `make(spec, args=...)`, so only top-level sections are checked for missing ones."""
    if not isinstance(kwargs, Mapping):
        problems.append(cfg.error(key, f'expected a mapping of {what} arguments, got {type(kwargs).__name__}'))
        return
    signature, hints = _signature_hints(target)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name, value in kwargs.items():
        sub = f'{key}.{name}'
        if name in refused:
            problems.append(cfg.error(sub, refused[name]))
        elif name not in accepted:
            if not takes_any:
                hint = did_you_mean(name, accepted) or f"; it takes: {', '.join(accepted[:12])}" + (
                    ', ...' if len(accepted) > 12 else '')
                problems.append(cfg.error(sub, f'{what} does not take {name!r}{hint}'))
        else:
            check_value(value, hints.get(name, params[name].annotation), sub, cfg, problems)
    if required:
        for name in accepted:
            if params[name].default is inspect.Parameter.empty and name not in kwargs:
                problems.append(cfg.error(key, f'{what} needs {name!r}'))


def check_value(value: Any, annotation: Any, key: str, cfg: Config, problems: list[str]) -> None:
    """Check one value against its annotation, following `Spec[...]` into nested specs."""
    spec = _spec_registry(annotation)
    if spec is not None and value is not None:
        check_spec(REGISTRIES[spec], value, key, cfg, problems)
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and value is not None:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            check_value(value, inner[0], key, cfg, problems)
            return
    if origin in (dict, Mapping) and len(args) == 2 and isinstance(value, dict):
        for k, v in value.items():
            check_value(v, args[1], f'{key}.{k}', cfg, problems)
        return
    if origin in (list, Sequence) and len(args) == 1 and isinstance(value, list):
        for i, v in enumerate(value):
            check_value(v, args[0], f'{key}.{i}', cfg, problems)
        return
    if _fits(value, annotation) is False:
        got = 'null' if value is None else f'{type(value).__name__} {value!r}'
        problems.append(cfg.error(key, f'expected {_describe(annotation)}, got {got}'))


def _spec_registry(annotation: Any) -> Optional[str]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [_spec_registry(a) for a in typing.get_args(annotation)]
        return next((f for f in found if f), None)
    if typing.get_origin(annotation) is typing.Annotated:
        return next((m.registry for m in annotation.__metadata__ if isinstance(m, _SpecMarker)), None)
    return None


def check_spec(registry: Registry, spec: Any, key: str, cfg: Config, problems: list[str],
               required: bool = False) -> None:
    """Check a `{name, args}` spec: known name, accepted and well-typed (and, if `required`, all
    required) arguments."""
    if not isinstance(spec, Mapping):
        problems.append(cfg.error(key, f'expected {_a(registry.kind)} spec {{name: ..., args: {{...}}}}, '
                                       f'got {type(spec).__name__} {spec!r}'))
        return
    allowed = ('name', 'args') + getattr(registry, 'extra_keys', ())
    for extra in spec:
        if extra not in allowed:
            problems.append(cfg.error(f'{key}.{extra}', f'a {registry.kind} spec has no key {extra!r}'
                                                        f'{did_you_mean(extra, allowed)}; keys: {", ".join(allowed)}'))
    if 'name' not in spec:
        problems.append(cfg.error(key, f'missing name: which {registry.kind}? one of {", ".join(registry.names())}'))
        return
    if not isinstance(spec['name'], str):
        problems.append(cfg.error(f'{key}.name', f"expected the name of a {registry.kind}, got {spec['name']!r}"))
        return
    try:
        cls = registry.get(spec['name'])
    except ConfigError as e:
        problems.append(cfg.error(f'{key}.name', str(e)))
        return
    check_kwargs(cls, spec.get('args') or {}, f'{key}.args', cfg, problems, f"{registry.kind} {spec['name']!r}",
                 required=required)
    if registry.check is not None:
        registry.check(spec, key, cfg, problems)


def check_sections(cfg: Config, allowed: Sequence[str] = TOP_LEVEL_SECTIONS) -> list[str]:
    """Problems with the top level: unknown or missing sections, the seed, the data module."""
    problems = [cfg.error(k, f'unknown section{did_you_mean(k, allowed)}; sections: {", ".join(allowed)}')
                for k in cfg if k not in allowed]
    problems += [cfg.error('', f'missing section {k!r}') for k in REQUIRED_SECTIONS if k not in cfg]
    seed = cfg.get('seed')
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        problems.append(cfg.error('seed', f'expected a non-negative integer, got {seed!r}'))
    if 'data_module' in cfg:
        check_spec(DATA_MODULES, cfg['data_module'], 'data_module', cfg, problems, required=True)
    for section in ('trainer_params', 'checkpoint'):
        if cfg.get(section) is not None and not isinstance(cfg[section], Mapping):
            problems.append(cfg.error(section, f'expected a mapping, got {type(cfg[section]).__name__}'))
    return problems


def build(what: str, key: str, cfg: Config, fn: Callable[[], Any]) -> Any:
    """Run `fn` (which builds something from the config); any exception becomes a ConfigError."""
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(cfg.error(key, f'building {what} failed: {type(e).__name__}: {e}'.splitlines()[0])) from e


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


# --------------------------------------------------------------------------------------- training

def make_optimizer(spec: Mapping, params: Any) -> Any:
    """An optimizer from `torch.optim` by name: `{name: AdamW, args: {lr: 1e-3}}`."""
    return OPTIMIZERS.make(spec, args={'params': params})


def make_scheduler(spec: Optional[Mapping], optimizer: Any) -> Optional[dict]:
    """A Lightning-style scheduler config from `{name, args, interval, frequency, monitor, warmup}`.

    `warmup: N` ramps the learning rate linearly over the first N intervals, then hands over to
    the named scheduler (torch's LinearLR + SequentialLR).
    """
    if not spec:
        return None
    import torch
    scheduler = SCHEDULERS.make(spec, args={'optimizer': optimizer})
    warmup = spec.get('warmup') or 0
    if warmup:
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
        # Rebuild the main scheduler after the ramp so both start from the configured learning rate.
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr']
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [ramp, SCHEDULERS.make(spec, args={'optimizer': optimizer})], milestones=[warmup])
    config = {'scheduler': scheduler, 'interval': spec.get('interval', 'epoch'),
              'frequency': spec.get('frequency', 1)}
    if spec.get('monitor'):
        config['monitor'] = spec['monitor']
    return config


class RunningMeans:
    """Sums of named loss terms kept on the device (no host sync per step), averaged on demand."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.count = 0

    def add(self, terms: Mapping[str, Any], n: int = 1) -> None:
        """Add one batch's terms (means over its `n` samples): one in-place operation per term."""
        for name, value in terms.items():
            if name in self.sums:
                self.sums[name].add_(value.detach(), alpha=n)
            else:
                self.sums[name] = value.detach() * n
        self.count += n

    def compute(self, all_reduce: Optional[Callable[[Any], Any]] = None) -> dict[str, float]:
        """Means since the last reset; `all_reduce` sums a tensor across processes when distributed."""
        import torch
        if not self.sums:
            return {}
        names = sorted(self.sums)
        totals = torch.stack([self.sums[n].float() for n in names] +
                             [torch.tensor(float(self.count), device=self.sums[names[0]].device)])
        if all_reduce is not None:
            totals = all_reduce(totals)
        totals = totals.tolist()
        return {n: totals[i] / max(totals[-1], 1.0) for i, n in enumerate(names)}

    def reset(self) -> None:
        """Start a new epoch."""
        self.sums, self.count = {}, 0


def keep_freed_memory() -> bool:
    """Have glibc keep the memory a training step frees, for the next step. By default it hands
    blocks over 128 KB back to the system as soon as they are freed, so a conv net's activations
    come back as fresh pages at every step: 6,000 page faults and a quarter of a 30 ms step on a
    CPU. After this, blocks up to 32 MB come from the heap and up to 1 GB of free heap is kept
    (the process stays at its peak memory). True if it took effect (Linux with glibc)."""
    import ctypes
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:   # not Linux, or not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


# ------------------------------------------------------------------------------------- experiment

_NAME_RULE = 'letters, digits, and . _ - = (no path separators, no "..")'


def check_experiment_name(name: str, flag: str = '--name') -> None:
    """An experiment name must stay one folder inside the save root."""
    if (not name or name in ('.', '..') or '..' in name or os.path.isabs(name)
            or re.search(r'[/\\]', name) or not re.fullmatch(r'[\w.\-=]+', name)):
        raise ConfigError(f'{flag} {name!r}: an experiment name may only use {_NAME_RULE}')


def global_rank_from_env() -> int:
    """This process's global rank as the launchers (torchrun, SLURM, Lightning's DDP) set it."""
    for var in ('RANK', 'SLURM_PROCID'):
        if os.environ.get(var, '').isdigit() and (var != 'SLURM_PROCID' or int(os.environ.get('SLURM_NTASKS', '1')) > 1):
            return int(os.environ[var])
    return int(os.environ.get('NODE_RANK', '0') or 0) + int(os.environ.get('LOCAL_RANK', '0') or 0)


_SOURCE_SKIP_DIRS = {'save', 'load', '.git', '__pycache__', '.pytest_cache', '.hypothesis', 'venv', '.venv',
                     'env', '.tox', '.mypy_cache', '.ruff_cache', 'node_modules', 'lightning_logs'}


class ExperimentDir:
    """`save/<name>/`: config.yaml, src/, git.txt, git.diff, log.txt, metrics.csv, tb/, ckpt/."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / 'ckpt'
        self.log_file = self.path / 'log.txt'

    @classmethod
    def for_name(cls, save_root: str | os.PathLike, name: str) -> 'ExperimentDir':
        """The folder for a validated experiment name under `save_root`."""
        check_experiment_name(name)
        return cls(Path(save_root) / name)

    def check_free(self, overwrite: bool) -> None:
        """Refuse a name in use, saying how to resume it or overwrite it explicitly."""
        if self.path.exists() and not overwrite:
            raise ConfigError(
                f'--name: experiment folder {_display_path(self.path)} already exists; continue it with '
                f'--resume {_display_path(self.path)}, choose another --name or --tag, or pass --overwrite '
                f'to move the old folder aside (nothing is deleted)')

    def create(self, config: Mapping, command: Sequence[str], overwrite: bool = False) -> Optional[Path]:
        """Make the folder and record config, source and git state. Returns where an old run was moved."""
        self.check_free(overwrite)
        moved = None
        if self.path.exists():
            stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
            moved = self.path.with_name(f'{self.path.name}.old-{stamp}')
            self.path.rename(moved)
        self.path.mkdir(parents=True)
        self.ckpt_dir.mkdir()
        self.write_config(config, command)
        self.copy_source()
        self.record_git()
        return moved

    def start(self, config: Mapping, command: Sequence[str], resume: bool, overwrite: bool = False) -> None:
        """Create the folder (or, on resume, record the new command in it) and log the command."""
        if resume:
            self.write_config(config, command)
            self.log(f'resumed: {" ".join(command)}')
            return
        moved = self.create(config, command, overwrite=overwrite)
        if moved is not None:
            print(f'moved the old {_display_path(self.path)} to {_display_path(moved)}')
        self.log(f'command: {" ".join(command)}')

    def write_config(self, config: Mapping, command: Sequence[str]) -> None:
        """config.yaml: the merged config, headed by every command that ran it (as comments, so
        the file still loads as a config)."""
        path = self.path / 'config.yaml'
        old = path.read_text().splitlines() if path.exists() else []
        header = [line for line in itertools.takewhile(lambda line: line.startswith('#'), old)]
        header.append(f'# {datetime.datetime.now().isoformat(timespec="seconds")}: {" ".join(command)}')
        _atomic_write(path, '\n'.join(header) + '\n' + dump_yaml(dict(config)))

    def copy_source(self, root: Path = PROJECT_ROOT) -> None:
        """Copy the project's Python files and configs into src/ (not data, runs, git or caches)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SOURCE_SKIP_DIRS and not d.startswith('.')
                           and not (Path(dirpath, d) / 'pyvenv.cfg').exists()
                           and Path(dirpath, d).resolve() != self.path.resolve().parent]
            for filename in filenames:
                if filename.endswith(('.py', '.yaml', '.yml', '.txt', '.md')):
                    source = Path(dirpath, filename)
                    target = self.path / 'src' / source.relative_to(root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)

    def record_git(self, root: Path = PROJECT_ROOT) -> None:
        """git.txt (commit and status) and git.diff (uncommitted changes), inside a git checkout."""
        def git(*args: str) -> Optional[str]:
            try:
                done = subprocess.run(['git', *args], cwd=root, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                return None
            return done.stdout if done.returncode == 0 else None
        commit = git('rev-parse', 'HEAD')
        if commit is None:
            return
        (self.path / 'git.txt').write_text(f'commit {commit.strip()}\n\n{git("status", "--short") or ""}')
        (self.path / 'git.diff').write_text(git('diff', 'HEAD') or '')

    def write_result(self, final: Mapping[str, float], monitor: Optional[str], best: Optional[float],
                     best_checkpoint: Optional[str]) -> None:
        """result.yaml: the last epoch's metrics and the best monitored value; it also marks the run
        as finished (a sweep skips finished runs and resumes the others)."""
        result = {'final': {k: float(v) for k, v in sorted(final.items())},
                  'best': {'monitor': monitor, 'value': None if best is None else float(best),
                           'checkpoint': best_checkpoint}}
        _atomic_write(self.path / 'result.yaml', dump_yaml(result))

    def checkpoint(self, which: str) -> Path:
        """`last`, `best` (the best monitored checkpoint, else the last) or a path to a .ckpt."""
        if which not in ('best', 'last'):
            return find_checkpoint(which, '--ckpt')
        last = self.ckpt_dir / 'last.ckpt'
        best = None
        if which == 'best' and (self.path / 'result.yaml').is_file():
            best = (parse_yaml((self.path / 'result.yaml').read_text(), 'result.yaml') or {}).get('best', {}).get(
                'checkpoint')
        path = self.ckpt_dir / best if best else last
        if not path.is_file():
            raise ConfigError(f'--ckpt {which}: no checkpoint {_display_path(path)}')
        return path

    def log(self, line: str) -> None:
        """Append one line to log.txt."""
        with open(self.log_file, 'a') as f:
            f.write(line.rstrip('\n') + '\n')


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def format_epoch_line(epoch: int, max_epochs: Optional[int], metrics: Mapping[str, float],
                      epoch_seconds: float, elapsed: float, epochs_done: int) -> str:
    """The per-epoch line of log.txt, the same for both entry points:

    epoch 3/20  train: loss 0.2311  val: loss 0.1540 acc 0.9593  1.2s, 4s / ~27s
    """
    total = f'/{max_epochs}' if max_epochs and max_epochs > 0 else ''
    parts = [f'epoch {epoch}{total}']
    for stage in ('train', 'val'):
        terms = [f'{k.split("/", 1)[1]} {v:.4f}' for k, v in sorted(metrics.items())
                 if k.startswith(stage + '/') and not k.endswith('_step')]
        if terms:
            parts.append(f'{stage}: ' + ' '.join(terms))
    timing = f'{epoch_seconds:.1f}s, {format_duration(elapsed)}'
    if max_epochs and max_epochs > 0 and epochs_done > 0:
        timing += f' / ~{format_duration(elapsed / epochs_done * max_epochs)}'
    parts.append(timing)
    return '  '.join(parts)


class MetricsWriter:
    """metrics.csv and TensorBoard events of one experiment; appends, never truncates.

    A new metric name adds a column: the file is rewritten once with the wider header.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.csv_path = Path(path) / 'metrics.csv'
        self.tb_dir = Path(path) / 'tb'
        self._columns: list[str] = []
        self._tb = None
        if self.csv_path.exists():
            with open(self.csv_path, newline='') as f:
                self._columns = next(csv.reader(f), [])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write one row (`step` and the metrics) and the same scalars to TensorBoard."""
        row = {'step': step, **{k: int(v) if k == 'epoch' else float(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in self._columns]
        if new:
            old_rows = []
            if self.csv_path.exists():
                with open(self.csv_path, newline='') as f:
                    old_rows = list(csv.DictReader(f))
            fixed = [c for c in ('epoch', 'step') if c in self._columns or c in row]
            self._columns = fixed + sorted(set(self._columns + new) - set(fixed))
            with open(self.csv_path, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(old_rows)
        with open(self.csv_path, 'a', newline='') as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(row)
        if self._tb is None:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.tb_dir))
        for key, value in metrics.items():
            if key != 'epoch':
                self._tb.add_scalar(key, float(value), step)

    def flush(self) -> None:
        """Push TensorBoard events to disk."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and release the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def model_summary(module: Any) -> str:
    """Parameter counts per top-level submodule and in total, for the head of log.txt."""
    def count(m: Any) -> int:
        return sum(p.numel() for p in m.parameters())
    parts = [f'{name} {count(child):,}' for name, child in module.named_children() if count(child)]
    return f'parameters: {count(module):,} total' + (f' ({", ".join(parts)})' if parts else '')


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states, in types `torch.load(weights_only=True)` reads."""
    import numpy as np
    import torch
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'python': random.getstate(), 'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    gauss], 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured, so a resumed run draws the same numbers."""
    import numpy as np
    import torch
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def read_checkpoint(path: Path, flag: str) -> dict:
    """A checkpoint's contents (tensors memory-mapped, `weights_only=True`); a missing, corrupt or
    foreign file is a ConfigError naming the flag."""
    import torch
    try:
        state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:
        raise ConfigError(f'{flag}: cannot read the checkpoint {_display_path(path)} '
                          f'({type(e).__name__}: {str(e).splitlines()[0][:120]})') from None
    if not isinstance(state, dict) or 'state_dict' not in state:
        raise ConfigError(f'{flag}: {_display_path(path)} is not a lightyaml/Lightning checkpoint (no state_dict)')
    return state


def find_checkpoint(target: str, flag: str) -> Path:
    """A .ckpt file as given, or an experiment folder's ckpt/last.ckpt; checked to be readable."""
    path = Path(target)
    if path.is_dir():
        path = ExperimentDir(path).ckpt_dir / 'last.ckpt'
        if not path.is_file():
            raise ConfigError(f'{flag} {target}: no checkpoint in this folder ({_display_path(path)} is missing)'
                              + ('; start it again with --overwrite' if flag == '--resume' else ''))
    elif not path.is_file():
        raise ConfigError(f'{flag} {target}: no such experiment folder or checkpoint file')
    read_checkpoint(path, f'{flag} {target}')
    return path


def load_weights(module: Any, path: Path, flag: str = '--init-from') -> None:
    """Load only the weights of a checkpoint into `module`; every mismatch is listed in one line."""
    weights = read_checkpoint(path, f'{flag} {_display_path(path)}')['state_dict']
    own = module.state_dict()
    shapes = [f'{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    problems = ([f"shapes differ (checkpoint vs model): {'; '.join(shapes)}"] if shapes else []) + \
               ([f"missing in the checkpoint: {', '.join(missing)}"] if missing else []) + \
               ([f"not in the model: {', '.join(unexpected)}"] if unexpected else [])
    if problems:
        raise ConfigError(f'{flag} {_display_path(path)}: ' + '; '.join(problems))
    module.load_state_dict({k: weights[k] for k in own})


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def list_registered(kinds: Sequence[str] = ()) -> str:
    """Text listing every registered name, for `--list [kind]`."""
    unknown = [k for k in kinds if k not in REGISTRIES]
    if unknown:
        raise ConfigError(f'--list {unknown[0]}: no such registry{did_you_mean(unknown[0], list(REGISTRIES))}; '
                          f'registries: {", ".join(REGISTRIES)}')
    lines = []
    for kind in kinds or REGISTRIES:
        lines.append(f'{kind}: {", ".join(REGISTRIES[kind].names())}')
    return '\n'.join(lines)



# -------------------------------------------------------------------------------- command line

def make_parser(doc: str) -> argparse.ArgumentParser:
    """The command line both entry points share."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', help='YAML config file')
    parser.add_argument('--name', help='experiment name: the run goes to <save-root>/<name> (default: config file stem)')
    parser.add_argument('--tag', help='appended to the name as <name>_<tag>')
    parser.add_argument('--gpu', help="CUDA devices to use, e.g. '0' or '1,2' (DDP with several), or 'cpu'")
    parser.add_argument('--nodes', type=int, help='number of machines (multi-node DDP)')
    parser.add_argument('--resume', help='an experiment folder (continues its last checkpoint) or a .ckpt file')
    parser.add_argument('--init-from', help='start a new run from the model weights of an experiment folder '
                                            '(its last.ckpt) or a .ckpt file; optimizer and counters start fresh')
    parser.add_argument('--overwrite', action='store_true',
                        help='if the experiment folder exists, move it aside to <name>.old-<time> and start anew')
    parser.add_argument('--save-root', default=str(PROJECT_ROOT / 'save'), help='where experiment folders go')
    parser.add_argument('--test', metavar='EXP', help="evaluate an experiment's checkpoint (--ckpt) on its test split")
    parser.add_argument('--predict', metavar='EXP', help="predict with an experiment's checkpoint on --data")
    parser.add_argument('--ckpt', default='best', help="with --test/--predict: best (default), last, or a .ckpt path")
    parser.add_argument('--data', help="with --predict: a dataset spec in YAML ('{name: digits, args: {split: test}}') "
                                       'or a folder of images (default: the test split)')
    parser.add_argument('--out', help='where --predict or --plot write (default: inside the experiment folder)')
    parser.add_argument('--plot', nargs='+', metavar='EXP', help="plot the curves of experiments' metrics.csv to a PNG")
    parser.add_argument('--sweep', action='append', default=[], metavar='key=v1,v2',
                        help='run one experiment per combination of values (repeat the flag for a grid)')
    parser.add_argument('--seeds', help='with a sweep: run every combination with each of these seeds, e.g. 0,1,2')
    parser.add_argument('--list', nargs='*', metavar='KIND', help='list registered names (all kinds, or the given ones)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of configuration errors')
    parser.add_argument('overrides', nargs='*', metavar='key.path=value', help='dotted config overrides, values parsed as YAML')
    return parser


def parse_gpu_flag(gpu: str) -> list[int] | str:
    """'cpu', or the CUDA device indices of `--gpu 1,2`."""
    if gpu.strip().lower() == 'cpu':
        return 'cpu'
    ids = [part.strip() for part in gpu.split(',')]
    if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpu {gpu!r}: expected distinct CUDA device indices such as 0 or 1,2, or 'cpu'")
    return [int(i) for i in ids]


def select_cuda_devices(ids: Sequence[int], device_count: Optional[Callable[[], int]] = None) -> int:
    """Make exactly devices `ids` visible (CUDA_VISIBLE_DEVICES, inherited by DDP processes) and
    return how many there are; fails clearly when this machine has fewer."""
    os.environ['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in ids)
    if device_count is None:
        import torch
        device_count = torch.cuda.device_count
    visible = device_count()
    if visible == 0:
        raise ConfigError(f"--gpu {','.join(map(str, ids))}: no CUDA device is available on this machine; "
                          f"leave out --gpu or pass --gpu cpu to train on the CPU")
    if visible < len(ids):
        raise ConfigError(f"--gpu {','.join(map(str, ids))}: only {visible} of these CUDA devices exist here")
    return len(ids)


class Run(typing.NamedTuple):
    """What the command line asks for, resolved and checked before anything is created."""
    cfg: Config
    exp: ExperimentDir
    resume: Optional[Path]      # the checkpoint to continue from (counters, optimizer, RNG)
    init_from: Optional[Path]   # a checkpoint to take only the weights from


def resolve_run(args: argparse.Namespace) -> Run:
    """From --config/--resume/--init-from/--name/--tag: the merged config, the experiment folder
    and the checkpoints involved. A new run's folder must be free; checkpoints must be readable."""
    ckpt = init = None
    if args.resume and args.init_from:
        raise ConfigError('--resume and --init-from: choose one (resume continues a run; --init-from starts a new '
                          'one from its weights)')
    if args.init_from:
        init = find_checkpoint(args.init_from, '--init-from')
    if args.resume:
        target = Path(args.resume)
        exp = ExperimentDir(target if target.is_dir() else target.resolve().parent.parent)
        if target.is_dir() and args.config:
            raise ConfigError(f'--config with --resume {args.resume}: a resumed run uses its own '
                              f'config.yaml (give changes as overrides)')
        if target.is_dir() and not (target / 'config.yaml').is_file():
            raise ConfigError(f'--resume {args.resume}: no config.yaml in this folder; is it an experiment folder?')
        ckpt = find_checkpoint(args.resume, '--resume')
        config_path = Path(args.config) if args.config else exp.path / 'config.yaml'
        if not config_path.is_file():
            raise ConfigError(f'--resume {args.resume}: no config.yaml beside this checkpoint; give --config')
    else:
        if not args.config:
            raise ConfigError('--config is required (or --resume an experiment folder); e.g. --config configs/digits.yaml')
        name = args.name or Path(args.config).stem
        if args.tag:
            check_experiment_name(args.tag, '--tag')
            name = f'{name}_{args.tag}'
        exp = ExperimentDir.for_name(args.save_root, name)
        if global_rank_from_env() == 0:
            exp.check_free(args.overwrite)
        config_path = Path(args.config)
    cfg = load_config(config_path, args.overrides)
    resolve_seed(cfg)
    return Run(cfg, exp, ckpt, init)


def run_cli(run: Callable[[argparse.Namespace, list[str]], Any], script: str, doc: str,
            argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line and call `run(args, command)`; a ConfigError prints one line per
    problem and exits with status 2 (a traceback only with --debug)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser(doc).parse_intermixed_args(argv)
    try:
        if args.list is not None:
            print(list_registered(args.list))
            return 0
        if args.plot:
            print(f'wrote {_display_path(plot_metrics([Path(p) for p in args.plot], args.out))}')
            return 0
        if args.sweep or args.seeds:
            return run_sweep(script, args, argv)
        run(args, ['python', script, *argv])
        return 0
    except ConfigError as e:
        if args.debug:
            raise
        for problem in e.problems:
            print(f'error: {problem}', file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        if args.debug:
            raise
        print(f'error: {e}', file=sys.stderr)
        return 1


# ---------------------------------------------------------------- results, test and predict outputs

def resolve_evaluation(args: argparse.Namespace, validate: Callable[[Config], None]) -> tuple[ExperimentDir, Config, Path]:
    """For --test/--predict: the experiment, its config (with overrides, validated) and the checkpoint."""
    flag, target = ('--test', args.test) if args.test else ('--predict', args.predict)
    exp = ExperimentDir(target)
    if not (exp.path / 'config.yaml').is_file():
        raise ConfigError(f'{flag} {target}: no config.yaml there; is it an experiment folder?')
    cfg = load_config(exp.path / 'config.yaml', args.overrides)
    validate(cfg)
    return exp, cfg, exp.checkpoint(args.ckpt)


def finish_run(exp: ExperimentDir, final: Mapping[str, float], monitor: Optional[str], best: Optional[float],
               best_checkpoint: Optional[Path]) -> None:
    """At the end of a run (rank 0): result.yaml, the run's own curves.png, a closing log line."""
    exp.write_result(final, monitor, best, best_checkpoint.name if best_checkpoint else None)
    plot_metrics([exp.path])
    if monitor and best is not None:
        exp.log(f'done: best {monitor} {best:.4f} ({best_checkpoint.name if best_checkpoint else "-"})')
    else:
        exp.log('done')


def record_test(exp: ExperimentDir, ckpt: Path, metrics: Mapping[str, float]) -> None:
    """Print test metrics and keep them: test.yaml (per checkpoint) and a line in log.txt."""
    values = {k: float(v) for k, v in sorted(metrics.items())}
    line = f"test ({ckpt.name}): " + '  '.join(f'{k} {v:.4f}' for k, v in values.items())
    print(line)
    exp.log(line)
    path = exp.path / 'test.yaml'
    tests = (parse_yaml(path.read_text(), str(path)) or {}) if path.is_file() else {}
    tests[ckpt.name] = values
    _atomic_write(path, dump_yaml(tests))


def predict_spec(data: Optional[str], cfg: Mapping) -> dict:
    """The dataset to predict on: a YAML spec, a folder of images (sized like the training images),
    or by default the config's test split."""
    args = cfg['data_module'].get('args') or {}
    if data is None:
        return args.get('test') or args.get('val')
    if Path(data).is_dir():
        sample = DATASETS.make(args.get('test') or args['train'])[0]['image']
        return {'name': 'image_folder', 'args': {'root': str(Path(data).resolve()), 'channels': sample.shape[0],
                                                 'size': list(sample.shape[1:])}}
    spec = parse_yaml(data, '--data')
    if not isinstance(spec, Mapping) or 'name' not in spec:
        raise ConfigError(f'--data {data!r}: expected a folder of images or a dataset spec such as '
                          f"'{{name: digits, args: {{split: test}}}}'")
    problems: list[str] = []
    check_spec(DATASETS, spec, 'data', Config({}, {'': '--data'}), problems)
    if problems:
        raise ConfigError(*problems)
    return dict(spec)


def write_predictions(path: Path, outputs: Any, dataset: Any) -> Path:
    """predictions.csv: one row per sample (its file for an image folder); for class scores the
    predicted class and its probability, else the output values."""
    rows = outputs.float().flatten(1) if outputs.dim() > 1 else outputs.float().unsqueeze(1)
    files = getattr(dataset, 'files', None)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        if outputs.dim() == 2 and outputs.shape[1] > 1:
            probabilities = rows.softmax(1)
            writer.writerow(['index', *(['file'] if files else []), 'pred', 'prob'])
            for i, (p, c) in enumerate(zip(*probabilities.max(1))):
                writer.writerow([i, *([files[i]] if files else []), int(c), f'{float(p):.6f}'])
        else:
            writer.writerow(['index', *(['file'] if files else []), *[f'out_{j}' for j in range(rows.shape[1])]])
            for i, row in enumerate(rows.tolist()):
                writer.writerow([i, *([files[i]] if files else []), *row])
    print(f'wrote {len(rows)} predictions to {_display_path(path)}')
    return path


# ------------------------------------------------------------------------------------------ plots

def read_curves(exp: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{metric: {stage: [(epoch, value), ...]}} from an experiment's metrics.csv (epoch-level
    values only; an epoch logged twice, as after a resume, keeps its last value)."""
    curves: dict[str, dict[str, dict[int, float]]] = {}
    with open(Path(exp) / 'metrics.csv', newline='') as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                stage, _, metric = key.partition('/')
                if value and metric and not metric.endswith('_step') and row.get('epoch'):
                    curves.setdefault(metric, {}).setdefault(stage, {})[int(row['epoch'])] = float(value)
    return {m: {st: sorted(v.items()) for st, v in stages.items()} for m, stages in curves.items()}


def plot_metrics(experiments: Sequence[Path], out: Optional[str | os.PathLike] = None) -> Path:
    """A PNG with one panel per metric (loss first): train dashed, val solid, test a dot;
    experiments overlaid in colours. Written to `out`, or <first experiment>/curves.png."""
    import matplotlib
    matplotlib.use('Agg')   # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    for exp in experiments:
        if not (Path(exp) / 'metrics.csv').is_file():
            raise ConfigError(f'--plot {exp}: no metrics.csv there; is it an experiment folder?')
    curves = {Path(exp): read_curves(exp) for exp in experiments}
    metrics = sorted({m for c in curves.values() for m in c}, key=lambda m: (m != 'loss', m))
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.4), squeeze=False)
    styles = {'train': dict(linestyle='--'), 'val': dict(linestyle='-'), 'test': dict(marker='o', linestyle='')}
    for ax, metric in zip(axes[0], metrics):
        for colour, (exp, exp_curves) in enumerate(curves.items()):
            for stage, points in exp_curves.get(metric, {}).items():
                epochs, values = zip(*points)
                ax.plot([e + 1 for e in epochs], values, color=f'C{colour}', label=f'{exp.name} {stage}',
                        **styles.get(stage, {}))
        ax.set_title(metric)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    path = Path(out) if out else Path(experiments[0]) / 'curves.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- sweeps

def sweep_grid(sweeps: Sequence[str], seeds: Optional[str]) -> list[list[str]]:
    """Every combination of `--sweep key=v1,v2 ...` (values parsed as YAML) and `--seeds`, as
    override lists: [['lr=0.001', 'seed=0'], ...]."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition('=')
        if not sep or not key or not values:
            raise ConfigError(f'--sweep {sweep!r}: expected key.path=v1,v2,... e.g. '
                              f'train_wrapper.args.optim_spec.args.lr=1e-3,3e-4')
        axes.append([f'{key}={v.strip()}' for v in _split_values(values)])
    if seeds:
        if not re.fullmatch(r'\d+(,\d+)*', seeds):
            raise ConfigError(f'--seeds {seeds!r}: expected seeds such as 0,1,2')
        axes.append([f'seed={s}' for s in seeds.split(',')])
    return [list(combo) for combo in itertools.product(*axes)]


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so `hidden=[64,64],[128]` gives two values."""
    parts, depth, current = [], 0, ''
    for char in text:
        depth += (char in '[{') - (char in ']}')
        if char == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += char
    return parts + [current]


def combo_name(base: str, combo: Sequence[str]) -> str:
    """A readable experiment name: digits-lr=0.001-seed=0."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (c.partition('=') for c in combo)]
    return re.sub(r'[^\w.\-=]', '_', '-'.join([base, *parts]))


def run_sweep(script: str, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run one experiment per combination, one after another, or one per GPU at a time with
    `--gpu 0,1`. Finished experiments (result.yaml) are skipped and interrupted ones resumed, so
    running the same command again continues a sweep. Then summary.csv and summary.md."""
    import concurrent.futures
    if not args.config:
        raise ConfigError('--sweep needs --config')
    base = args.name or Path(args.config).stem
    check_experiment_name(base)
    grid = sweep_grid(args.sweep, args.seeds)
    cfg = load_config(args.config, [*args.overrides, *grid[0]])   # fail early on a bad key or value
    sweep_dir = Path(args.save_root) / f'{base}-sweep'
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(sweep_dir / 'sweep.yaml', dump_yaml({'command': ' '.join(['python', script, *argv]),
                                                       'experiments': [combo_name(base, c) for c in grid]}))
    gpus = parse_gpu_flag(args.gpu) if args.gpu else 'cpu'
    slots = gpus if isinstance(gpus, list) else [None]
    free = list(slots)

    def one(combo: list[str]) -> int:
        exp = Path(args.save_root) / combo_name(base, combo)
        if (exp / 'result.yaml').is_file():
            return 0
        slot = free.pop()
        try:
            target = (['--resume', str(exp)] if (exp / 'ckpt' / 'last.ckpt').is_file()
                      else ['--config', args.config, '--name', exp.name] + (['--overwrite'] if exp.exists() else []))
            command = [sys.executable, str(PROJECT_ROOT / script), *target, '--save-root', args.save_root,
                       *(['--gpu', str(slot)] if slot is not None else []), *args.overrides, *combo]
            print(f'sweep: {exp.name}', flush=True)
            return subprocess.run(command).returncode
        finally:
            free.append(slot)
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
        codes = list(pool.map(one, grid))
    summary = summarize_sweep(Path(args.save_root), base, grid, cfg, sweep_dir)
    print(summary)
    return 0 if not any(codes) else 1


def summarize_sweep(save_root: Path, base: str, grid: Sequence[Sequence[str]], cfg: Mapping, out: Path) -> str:
    """summary.csv and summary.md: the monitored metric (best value of each run) per combination,
    mean ± std over seeds. Returns the markdown."""
    import statistics
    monitor = (cfg.get('checkpoint') or {}).get('monitor') or 'val/loss'
    groups: dict[tuple, list[Optional[float]]] = {}
    for combo in grid:
        result_file = save_root / combo_name(base, combo) / 'result.yaml'
        result = parse_yaml(result_file.read_text(), str(result_file)) if result_file.is_file() else None
        value = None if result is None else (result['best']['value'] if result['best']['monitor'] == monitor
                                             else result['final'].get(monitor))
        groups.setdefault(tuple(c for c in combo if not c.startswith('seed=')), []).append(value)
    keys = [c.partition('=')[0].rsplit('.', 1)[-1] for c in next(iter(groups))]
    rows = []
    for combo, values in groups.items():
        done = [v for v in values if v is not None]
        mean = statistics.fmean(done) if done else float('nan')
        std = statistics.stdev(done) if len(done) > 1 else 0.0
        rows.append([c.partition('=')[2] for c in combo] + [len(done), len(values), mean, std] +
                    ['' if v is None else v for v in values])
    with open(out / 'summary.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(keys + ['runs_done', 'runs', f'{monitor} mean', f'{monitor} std'] +
                        [f'run {i}' for i in range(max(len(v) for v in groups.values()))])
        writer.writerows(rows)
    lines = [f"| {' | '.join(keys)} | {monitor} (mean ± std) | runs |", '|' + ' --- |' * (len(keys) + 2)]
    lines += [f"| {' | '.join(str(x) for x in r[:len(keys)])} | {r[len(keys) + 2]:.4f} ± {r[len(keys) + 3]:.4f} | "
              f'{r[len(keys)]}/{r[len(keys) + 1]} |' for r in rows]
    markdown = '\n'.join(lines) + '\n'
    (out / 'summary.md').write_text(markdown)
    return markdown
