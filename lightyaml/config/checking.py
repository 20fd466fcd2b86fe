"""Checking a config against the signatures of what it builds, before anything is built.

Every problem becomes one line `file: key.path: problem (did you mean ...)`. Lightning-free.
"""
from __future__ import annotations

import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

from lightyaml.built_specs import spec_of
from lightyaml.config.loading import Config
from lightyaml.config.sections import check_small_sections
from lightyaml.errors import ConfigError, ModuleFileError, did_you_mean
from lightyaml.object_args import PARTIAL, Takes, registry_with, signature_hints, takes
from lightyaml.registry import DATA_MODULES, DATASETS, REGISTRIES, SCHEDULERS, TRANSFORMS, Registry, SpecMarker

TOP_LEVEL_SECTIONS = ('seed', 'threads', 'data_module', 'train_wrapper', 'trainer_params', 'checkpoint', 'callbacks',
                      'loggers', 'predict', 'init_from', 'scale_lr', 'sharding')
REQUIRED_SECTIONS = ('data_module', 'train_wrapper')
# Arguments lightyaml gives a kind itself, so that a config need not: a logger's `save_dir` is the
# experiment folder (lightyaml/run/trackers.py, tracker_args).
SUPPLIED_ARGS = {'logger': ('save_dir',), 'train.py logger': ('save_dir',)}
MAX_SEED = 2**32 - 1   # NumPy's limit; Lightning would silently draw another seed above it

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
        if not literals:
            return ' or '.join(others)
        return f"one of {', '.join(literals)}" + ''.join(f' or {o}' for o in others)
    if origin is typing.Literal:
        return f"one of {', '.join(repr(v) for v in args)}"
    if annotation is type(None):
        return 'None'
    return getattr(annotation, '__name__', str(annotation).replace('typing.', ''))


def check_kwargs(target: Any, kwargs: Mapping, key: str, cfg: Config, problems: list[str],
                 what: str, refused: Mapping[str, str] = {}, required: bool = False) -> None:
    """Check `kwargs` against `target`'s signature: unknown names, wrong types, nested specs, and
    (if `required`) missing arguments. Nested specs may get more arguments at run time from
    `make(spec, args=...)`, so only top-level sections are checked for missing ones."""
    if not isinstance(kwargs, Mapping):
        problems.append(cfg.error(key, f'expected a mapping of {what} arguments, got {type(kwargs).__name__}'))
        return
    signature, hints = signature_hints(target)
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
        problems += [cfg.error(key, f'{what} needs {name!r}') for name in missing_arguments(target, kwargs)]


def missing_arguments(target: Any, given: Iterable[str]) -> list[str]:
    """The arguments `target`'s signature needs (no default) that are not in `given`."""
    params = signature_hints(target)[0].parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is inspect.Parameter.empty and p.name not in given]


def check_value(value: Any, annotation: Any, key: str, cfg: Config, problems: list[str]) -> None:
    """Check one value against its annotation, following `Spec[...]` into nested specs, and specs
    given for arguments that take objects or factories (lightyaml/object_args.py)."""
    how = takes(annotation, value)
    if how is not None:
        check_object_spec(how, value, key, cfg, problems)
        return
    named = _named_specs(annotation)
    if named is not None and isinstance(value, Mapping) and 'name' not in value:
        if not value:
            problems.append(cfg.error(key, 'expected a spec {name: ..., args: {...}} or named specs '
                                           '{some_name: SPEC, ...}, got an empty mapping'))
        check_value(value, named, key, cfg, problems)   # `{clean: SPEC, noisy: SPEC}`
        return
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


def _named_specs(annotation: Any) -> Optional[Any]:
    """`dict[str, Spec[...]]` where the annotation is a Union that also takes one spec, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    return next((a for a in typing.get_args(annotation) if typing.get_origin(a) is dict
                 and _spec_registry(typing.get_args(a)[-1])), None)


def _spec_registry(annotation: Any) -> Optional[str]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [_spec_registry(a) for a in typing.get_args(annotation)]
        return next((f for f in found if f), None)
    if typing.get_origin(annotation) is typing.Annotated:
        return next((m.registry for m in annotation.__metadata__ if isinstance(m, SpecMarker)), None)
    return None


def check_spec(registry: Registry, spec: Any, key: str, cfg: Config, problems: list[str],
               required: bool = False) -> None:
    """Check a `{name, args}` spec: known name, accepted and well-typed (and, if `required`, all
    required) arguments."""
    cls = _spec_class(registry, spec, key, cfg, problems, ('name', 'args') + getattr(registry, 'extra_keys', ()))
    if cls is None:
        return
    args = spec.get('args') or {}
    nested = getattr(registry, 'spec_lists', ())   # e.g. RandomChoice's transforms: specs, checked by its rule
    if nested and isinstance(args, Mapping):
        args = {k: v for k, v in args.items() if not (k in nested and isinstance(v, list))}
    what = f"{registry.kind} {spec['name']!r}"
    check_kwargs(cls, args, f'{key}.args', cfg, problems, what)
    if required and isinstance(args, Mapping):
        given = [*args, *SUPPLIED_ARGS.get(registry.kind, ())]
        problems += [cfg.error(f'{key}.args', f'{what} needs {name!r}') for name in missing_arguments(cls, given)]
    rule = KIND_RULES.get(registry.kind)
    if rule is not None:
        rule(spec, key, cfg, problems)


def _spec_class(registry: Registry, spec: Any, key: str, cfg: Config, problems: list[str],
                allowed: tuple[str, ...]) -> Any:
    """The class a spec names, or None with the problems of its shape, keys and name recorded."""
    if not isinstance(spec, Mapping):
        problems.append(cfg.error(key, f'expected {_a(registry.kind)} spec {{name: ..., args: {{...}}}}, '
                                       f'got {type(spec).__name__} {spec!r}'))
        return None
    for extra in spec:
        if extra not in allowed:
            problems.append(cfg.error(f'{key}.{extra}', f'a {registry.kind} spec has no key {extra!r}'
                                                        f'{did_you_mean(extra, allowed)}; keys: {", ".join(allowed)}'))
    if 'name' not in spec:
        problems.append(cfg.error(key, f'missing name: which {registry.kind}? one of {", ".join(registry.names())}'))
        return None
    if not isinstance(spec['name'], str):
        problems.append(cfg.error(f'{key}.name', f"expected the name of a {registry.kind}, got {spec['name']!r}"))
        return None
    try:
        return registry.get(spec['name'])
    except ModuleFileError:
        raise
    except ConfigError as e:
        problems.append(cfg.error(f'{key}.name', str(e)))
        return None


def check_object_spec(how: Takes, value: Mapping, key: str, cfg: Config, problems: list[str]) -> None:
    """Check a spec given for an argument that takes an object (all its required arguments) or a
    factory (the class with these args bound: its name and arguments only; a scheduler's
    `monitor` is then the module's own business)."""
    if PARTIAL in value and not isinstance(value[PARTIAL], bool):
        problems.append(cfg.error(f'{key}.{PARTIAL}', f'expected true (a factory: the class with these args '
                                                      f'bound) or false (the object), got {value[PARTIAL]!r}'))
    registry = registry_with(how, value['name'], REGISTRIES)
    spec = {k: v for k, v in value.items() if k != PARTIAL}
    if not how.factory:
        check_spec(registry, spec, key, cfg, problems, required=True)
        return
    cls = _spec_class(registry, spec, key, cfg, problems, ('name', 'args'))
    if cls is not None:
        check_kwargs(cls, spec.get('args') or {}, f'{key}.args', cfg, problems, f"{registry.kind} {spec['name']!r}")


def check_spec_list(registry: Registry, cfg: Config, section: str, problems: list[str]) -> None:
    """Check a top-level list of specs such as `callbacks` or `loggers`: a list, each item a spec."""
    specs = cfg.get(section) or []
    if not isinstance(specs, list):
        problems.append(cfg.error(section, f'expected a list of {registry.kind} specs, got {type(specs).__name__}'))
        return
    for i, spec in enumerate(specs):
        check_spec(registry, spec, f'{section}.{i}', cfg, problems, required=True)


def check_sections(cfg: Config, allowed: Sequence[str] = TOP_LEVEL_SECTIONS) -> list[str]:
    """Problems with the top level: unknown or missing sections, the seed, the data module."""
    problems = [cfg.error(k, f'unknown section{did_you_mean(k, allowed)}; sections: {", ".join(allowed)}')
                for k in cfg if k not in allowed]
    problems += [cfg.error('', f'missing section {k!r}') for k in REQUIRED_SECTIONS if k not in cfg]
    seed = cfg.get('seed')
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        problems.append(cfg.error('seed', f'expected an integer from 0 to {MAX_SEED}, got {seed!r}'))
    threads = cfg.get('threads')
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        problems.append(cfg.error('threads', f'expected a whole number of CPU threads from 1, got {threads!r}'))
    if 'data_module' in cfg:
        name = cfg['data_module'].get('name') if isinstance(cfg['data_module'], Mapping) else None
        if isinstance(name, str) and name not in DATA_MODULES.names() and name in DATASETS.names():
            # torchx and others name a data set where lightyaml wants the data module that serves it
            problems.append(cfg.error('data_module.name', f"unknown data module {name!r}: {name!r} is a dataset; use "
                                      f"data_module: {{name: default, args: {{train: {{name: {name}, args: {{...}}}}, "
                                      f"val: {{name: {name}, args: {{...}}}}, batch_size: 32}}}}"))
        else:
            check_spec(DATA_MODULES, cfg['data_module'], 'data_module', cfg, problems, required=True)
    for section in ('trainer_params', 'checkpoint'):
        if cfg.get(section) is not None and not isinstance(cfg[section], Mapping):
            problems.append(cfg.error(section, f'expected a mapping, got {type(cfg[section]).__name__}'))
    if isinstance(cfg.get('checkpoint'), Mapping):
        problem = checkpoint_filename_problem(cfg['checkpoint'].get('filename'))
        if problem:
            problems.append(cfg.error('checkpoint.filename', problem))
    check_small_sections(cfg, problems)
    return problems


def checkpoint_filename_problem(filename: Any) -> Optional[str]:
    """Checkpoint names stay inside ckpt/: no absolute path, no `..`, no `~` (what is wrong, or None)."""
    if not isinstance(filename, str):
        return None   # None is the default; other types are reported against ModelCheckpoint's signature
    parts = filename.replace('\\', '/').split('/')
    if filename.startswith(('/', '~')) or os.path.isabs(filename) or '..' in parts or '\0' in filename:
        return (f'{filename!r} would write outside the experiment\'s ckpt/ folder; give a name such as '
                f"'{{epoch}}-{{val/acc:.3f}}' (subfolders are fine, '..' and absolute paths are not)")
    return None


def build(what: str, key: str, cfg: Config, fn: Callable[[], Any]) -> Any:
    """Run `fn` (which builds something from the config); any exception becomes a ConfigError
    naming the key it comes from (`blame`), `key` when it cannot tell."""
    return attempt(f'building {what}', key, cfg, fn)


def attempt(what: str | Callable[[], str], key: str, cfg: Config, fn: Callable[[], Any],
            detail: Callable[[], str] = str, outputs: Optional[Mapping[str, tuple[Mapping, int]]] = None) -> Any:
    """Run `fn`; an exception becomes one ConfigError line `file: key: <what> failed: Type: message`,
    the key found by `blame` (falling back to `key`), followed by `detail()` (e.g. tensor shapes).
    `what` may be a function, for work that goes through several phases. `outputs`: the models'
    output sizes seen so far, {label: (spec, size of the last dimension)} (see `blame`)."""
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as e:
        key = blame(e, cfg, key, outputs)
        phase = what() if callable(what) else what
        message = f'{phase} failed: {type(e).__name__}: {first_line(e)}{_spec_args(cfg, key)}{detail()}'
        # An override that changed something below the key is named, not the file it overrode.
        overrides = [o for k, o in cfg.origins.items() if k.startswith(f'{key}.') and o.startswith('override')]
        raise ConfigError(f'{overrides[-1] if overrides else cfg.where(key)}: {key}: {message}') from e


def _spec_args(cfg: Config, key: str) -> str:
    """` (with T_max=0)`: the arguments of the spec at `key`, when the error names no single one."""
    node: Any = cfg
    for part in key.split('.'):
        node = node.get(part) if isinstance(node, Mapping) else None
    args = node.get('args') if isinstance(node, Mapping) and 'name' in node else None
    plain = [f'{k}={v!r}' for k, v in args.items() if isinstance(v, (int, float, str, bool))] if isinstance(
        args, Mapping) else []
    return f" (with {', '.join(plain)})" if plain else ''


def first_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ''


def blame(error: BaseException, cfg: Config, fallback: str,
          outputs: Optional[Mapping[str, tuple[Mapping, int]]] = None) -> str:
    """The config key an exception comes from.

    Objects the registries build remember their spec (utils.remember_spec). An exception raised
    while one is built carries its spec (`error.spec`); one raised later inside a method of a built
    object (a scheduler's step, a dataset's __getitem__, a loss's forward) is traced through the
    traceback's frames, innermost first, to the first such object. That spec is found in the
    config by value; else `fallback`. Then, when the message names exactly one argument of that
    spec or section (or quotes exactly one of their values), the key narrows to that argument.
    A loss that finds a label beyond the outputs of the one model seen is that model's doing when
    exactly one integer argument of its spec equals the outputs' number (`out_dim: 5` for 10
    classes names `model_spec.args.out_dim`, or the key its `${...}` reference points to).
    """
    found = getattr(error, 'spec', None) or _spec_in_traceback(error)
    if found and found[0] == 'loss' and outputs and len(outputs) == 1 and SIZE_ERROR.search(first_line(error)):
        spec, size = next(iter(outputs.values()))
        model_key = next(_paths_of(cfg, spec), None)
        sized = [k for k, v in (spec.get('args') or {}).items() if type(v) is int and v == size]
        if model_key and len(sized) == 1:   # a value that is one reference: where it points
            whole = re.fullmatch(r'\$\{([^}]+)\}', cfg.references.get(f'{model_key}.args.{sized[0]}', ''))
            return whole.group(1) if whole else f'{model_key}.args.{sized[0]}'
    key = (next(_paths_of(cfg, found[1]), None) if found else None) or fallback
    return _narrow(cfg, key, first_line(error) if not isinstance(error, KeyError) else repr(error)) if key else ''


# What a classification loss says when a label is beyond the model's outputs (torch's words).
SIZE_ERROR = re.compile(r'Target -?\d+ is out of bounds')


def _spec_in_traceback(error: BaseException) -> Optional[tuple[str, Mapping]]:
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        found = spec_of(frame.f_locals.get('self'))
        if found:
            return found
    return None


def _paths_of(node: Any, target: Mapping, prefix: str = '') -> Iterator[str]:
    """Key paths in `node` whose value equals `target`."""
    if isinstance(node, Mapping):
        if prefix and dict(node) == dict(target):
            yield prefix
        for k, v in node.items():
            yield from _paths_of(v, target, f'{prefix}.{k}' if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths_of(v, target, f'{prefix}.{i}')


def _narrow(cfg: Config, key: str, message: str) -> str:
    node: Any = cfg
    for part in key.split('.') if key else []:
        node = node.get(part) if isinstance(node, Mapping) else (
            node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else None)
    if isinstance(node, Mapping) and 'name' in node:
        node, key = node.get('args') or {}, f'{key}.args'
    if not isinstance(node, Mapping):
        return key.removesuffix('.args')
    scalars = {str(k): v for k, v in node.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    named = [k for k in scalars if re.search(rf'(?<![\w./-]){re.escape(k)}(?![\w/-])', message)]   # not in a path
    if not named:   # the value itself: 'lbl' in KeyError('lbl'), -0.1 in 'Invalid learning rate: -0.1'
        named = [k for k, v in scalars.items() if re.search(
            rf"(?<![\w.'-]){re.escape(repr(v) if isinstance(v, str) else str(v))}(?![\w.'])", message)]
    return f'{key}.{named[0]}' if len(named) == 1 else key.removesuffix('.args')


# ------------------------------------------------- rules of some kinds beyond their signatures

def check_scheduler_spec(spec: Any, key: str, cfg: Config, problems: list[str]) -> None:
    """Scheduler-specific rules on top of the generic spec check."""
    if not isinstance(spec, Mapping):
        return
    if spec.get('interval', 'epoch') not in ('epoch', 'step'):
        problems.append(cfg.error(f'{key}.interval', f"expected 'epoch' or 'step', got {spec['interval']!r}"))
    frequency = spec.get('frequency', 1)   # both loops step it when the count is a multiple of it
    if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
        problems.append(cfg.error(f'{key}.frequency', f'expected an integer >= 1 (step every N intervals), '
                                                      f'got {frequency!r}'))
    if spec.get('name') == 'ReduceLROnPlateau':
        if not spec.get('monitor'):
            problems.append(cfg.error(f'{key}.monitor',
                                      'ReduceLROnPlateau needs the metric it watches, e.g. monitor: val/loss'))
        if spec.get('warmup'):
            problems.append(cfg.error(f'{key}.warmup', 'warmup cannot be combined with ReduceLROnPlateau'))
    warmup = spec.get('warmup')
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        problems.append(cfg.error(f'{key}.warmup', f'expected a non-negative integer, got {warmup!r}'))



def check_dataset_spec(spec: Any, key: str, cfg: Config, problems: list[str]) -> None:
    """A dataset class may check its arguments beyond their types with a classmethod
    `check_args(args) -> [(sub key, problem), ...]` (e.g. which transforms it can apply)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get('args') or {}, Mapping):
        return
    check_args = getattr(DATASETS.get(spec['name']), 'check_args', None)
    for sub, problem in check_args(dict(spec.get('args') or {})) if check_args else ():
        problems.append(cfg.error(f'{key}.args.{sub}', problem))


def check_transform_spec(spec: Any, key: str, cfg: Config, problems: list[str]) -> None:
    """`RandomChoice`, `RandomApply`, `Compose`, ... take a list of transform specs: check each."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get('args'), Mapping):
        return
    if isinstance(spec['args'].get('transforms'), list):
        for i, item in enumerate(spec['args']['transforms']):
            check_spec(TRANSFORMS, item, f'{key}.args.transforms.{i}', cfg, problems)


KIND_RULES: dict[str, Callable[[Any, str, Config, list[str]], None]] = {
    SCHEDULERS.kind: check_scheduler_spec, DATASETS.kind: check_dataset_spec, TRANSFORMS.kind: check_transform_spec}
