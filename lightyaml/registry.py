"""Registries: one generic `Registry`, and every extension point of the template, one line each.

A package's `register`/`make` are these objects' methods; a registry imports its package's
files the first time it is asked for a name. Those files may import Lightning by either of its
package names (lightyaml/lightning_names.py, installed here). Imports only lightyaml/errors.py,
built_specs.py, lightning_names.py and object_args.py; Lightning-free and torch-free at import.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import pkgutil
import traceback
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from lightyaml.built_specs import built
from lightyaml.errors import ConfigError, DuplicateNameError, ModuleFileError, did_you_mean, display_path
from lightyaml.lightning_names import install
from lightyaml.object_args import built_objects

install()   # `import lightning` / `lightning.pytorch` in a user's file: the pytorch_lightning lightyaml runs


class Registry:
    """Names -> classes, filled by `@register('name')` in the files of one package.

    Every module file of `package` is imported the first time the registry is asked for a name,
    so a new file with the decorator is found with no other edit.
    """

    def __init__(self, kind: str, package: Optional[str] = None, fallback: Optional[Registry] = None) -> None:
        self.kind = kind
        self.package = package
        self.fallback = fallback   # looked up for names this registry does not have
        self._classes: dict[str, Any] = {}
        self._imported = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@register('mlp')` makes the class buildable as `{name: mlp, args: ...}`."""
        def decorator(obj: Any) -> Any:
            old = self._classes.get(name)
            if old is not None and _defined_at(old) != _defined_at(obj):
                raise DuplicateNameError(f"{self.kind} '{name}' is registered twice: "
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
                try:
                    importlib.import_module(f'{self.package}.{module.name}')
                except Exception as e:   # a mistake in a user's file: say where, without a traceback
                    self._imported = False   # asked again, the same error, not a registry missing names
                    raise ModuleFileError(_where_it_failed(e, Path(module.module_finder.path) / f'{module.name}.py')
                                          ) from e

    def names(self, fallback: bool = True) -> list[str]:
        """Every registered name, sorted (this registry's first, then its fallback's unless
        `fallback` is false)."""
        self._import_package()
        return sorted(self._classes) + (self.fallback.names() if self.fallback and fallback else [])

    def has(self, name: str) -> bool:
        """Whether `name` is registered here or in the fallback."""
        self._import_package()
        return name in self._classes or bool(self.fallback and self.fallback.has(name))

    def get(self, name: str) -> Any:
        """The class registered as `name`; an unknown name is a ConfigError with close matches."""
        self._import_package()
        if name not in self._classes and self.fallback and self.fallback.has(name):
            return self.fallback.get(name)
        if name not in self._classes:
            close = did_you_mean(name, self.names(fallback=False)) or did_you_mean(name, self.names())   # own first
            raise ConfigError(f"unknown {self.kind} {name!r}{close}; "
                              f"registered: {self._registered()}")
        return self._classes[name]

    def _registered(self) -> str:
        """The names for an error line: this registry's, then a model zoo's as a count
        (`torchvision.* (80 models)`) where it has many."""
        parts, registry = [], self
        while registry is not None:
            names = registry.names(fallback=False)
            many = isinstance(registry, ModelZoo) and len(names) > 20
            parts += [f'{registry.module}.* ({len(names)} {registry.kind}s, see --list)'] if many else names
            registry = registry.fallback
        return ', '.join(parts) or '(none)'

    def make(self, spec: Mapping, args: Optional[Mapping] = None) -> Any:
        """Build `{name, args}`; `args` given here override the spec's. The spec is not changed. A
        spec given for an argument that takes an object (`net: nn.Module`, `optimizer:
        OptimizerCallable`) is built first (lightyaml/object_args.py)."""
        kwargs = copy.deepcopy(dict(spec.get('args') or {}))
        kwargs.update(args or {})

        def construct() -> Any:
            cls = self.get(spec['name'])
            return cls(**built_objects(cls, kwargs, REGISTRIES))
        return built(self.kind, spec, construct)   # lightyaml/built_specs.py


class ClassNamespace(Registry):
    """A read-only registry over an existing module, e.g. every optimizer in `torch.optim` or every
    transform in `torchvision.transforms.v2`."""

    def __init__(self, kind: str, module: str, base: str, extra_keys: tuple[str, ...] = (),
                 spec_lists: tuple[str, ...] = ()) -> None:
        super().__init__(kind)
        self.module, self.base, self.extra_keys = module, base, extra_keys
        self.spec_lists = spec_lists   # arguments given as lists of specs of this kind (checked by `check`)

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


def _where_it_failed(error: Exception, file: Path) -> str:
    """`file:line: Type: message` for an exception raised while importing `file`: the line of a
    SyntaxError, else the deepest line of the traceback inside `file`'s folder (the user's code,
    not the importer's or a decorator's)."""
    message = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'.rstrip(': ')
    if isinstance(error, DuplicateNameError):   # it names both files and lines already
        return str(error)
    if isinstance(error, SyntaxError) and error.filename:
        return f'{display_path(Path(error.filename))}:{error.lineno}: {type(error).__name__}: {error.msg}'
    inside = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve().parent == file.resolve().parent]
    if inside:
        return f'{display_path(Path(inside[-1].filename))}:{inside[-1].lineno}: {message}'
    return f'{display_path(file)}: {message}'


class ModelZoo(Registry):
    """A library's models by name, `<prefix>.<name>` (read-only), each built by the adapter class
    `adapter` names (models/torchvision_models.py, models/timm_models.py: the batch's image in,
    logits out). The library is imported when one of its names is looked up, and never for other
    names; a zoo whose library is not installed has no names."""

    def __init__(self, kind: str, library: str, adapter: str, fallback: Optional[Registry] = None) -> None:
        super().__init__(kind, fallback=fallback)
        self.module, self.adapter = library, adapter   # `module`: whose version --list caches the names by

    def has(self, name: str) -> bool:
        return (name.startswith(f'{self.module}.') and super().has(name)) or bool(
            self.fallback and self.fallback.has(name))

    def _import_package(self) -> None:
        if self._imported:
            return
        self._imported = True
        if importlib.util.find_spec(self.module) is None:   # an optional library that is not installed
            return
        adapter = _import_object(self.adapter)
        for name in adapter.architectures():
            self._classes[f'{self.module}.{name}'] = adapter.for_builder(name)


class TorchvisionModels(ModelZoo):
    """torchvision's classifiers as a zoo (the name forks may use; `ModelZoo` is the general one)."""

    def __init__(self, kind: str, adapter: str, fallback: Optional[Registry] = None) -> None:
        super().__init__(kind, 'torchvision', adapter, fallback)


def _import_object(dotted: str) -> Any:
    module, _, name = dotted.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _defined_at(obj: Any) -> str:
    try:
        line = inspect.getsourcelines(obj)[1]
        return f'{display_path(Path(inspect.getsourcefile(obj)))}:{line} ({obj.__module__}.{obj.__qualname__})'
    except (OSError, TypeError):
        return f'{obj.__module__}.{obj.__qualname__}'


# Every extension point of the template. A package's own `register`/`make` are these objects.
DATASETS = Registry('dataset', 'datasets')
DATA_MODULES = Registry('data module', 'datasets')
MODELS = Registry('model', 'models',                          # + torchvision's and timm's classifiers, by name
                  fallback=TorchvisionModels('model', 'models.torchvision_models.TorchvisionClassifier',
                                             fallback=ModelZoo('model', 'timm', 'models.timm_models.TimmClassifier')))
LOSSES = Registry('loss', 'losses')
WRAPPERS = Registry('training wrapper', 'models.wrappers')    # LightningModules: train_pl.py only
CALLBACKS = Registry('callback', 'callbacks',                 # Lightning callbacks: train_pl.py only
                     fallback=ClassNamespace('callback', 'pytorch_lightning.callbacks',   # + its built-ins
                                             'pytorch_lightning.callbacks.Callback'))
LOGGERS = Registry('logger', 'callbacks',                     # Lightning loggers (`loggers:`): train_pl.py
                   fallback=ClassNamespace('logger', 'pytorch_lightning.loggers', 'pytorch_lightning.loggers.Logger'))
TRACKERS = ClassNamespace('train.py logger', 'lightyaml.run.trackers',   # MLflow and W&B by their own clients: train.py
                          'lightyaml.run.trackers.Tracker')
OPTIMIZERS = ClassNamespace('optimizer', 'torch.optim', 'torch.optim.Optimizer')
SCHEDULERS = ClassNamespace('scheduler', 'torch.optim.lr_scheduler', 'torch.optim.lr_scheduler.LRScheduler',
                            extra_keys=('interval', 'frequency', 'monitor', 'warmup'))
METRICS = ClassNamespace('metric', 'torchmetrics', 'torchmetrics.Metric')
TRANSFORMS = ClassNamespace('transform', 'torchvision.transforms.v2', 'torchvision.transforms.v2.Transform',
                            spec_lists=('transforms',))   # a dataset's `transforms`
REGISTRIES = {'datasets': DATASETS, 'data_modules': DATA_MODULES, 'models': MODELS, 'losses': LOSSES,
              'wrappers': WRAPPERS, 'callbacks': CALLBACKS, 'loggers': LOGGERS, 'optimizers': OPTIMIZERS,
              'schedulers': SCHEDULERS, 'metrics': METRICS,
              'transforms': TRANSFORMS}


class SpecMarker(typing.NamedTuple):
    registry: str


class Spec:
    """Annotation of an argument that takes a `{name, args}` spec: `model_spec: Spec['models']`, or
    its alias `model_spec: ModelSpec`.

    The config validator follows these annotations into nested specs.
    """

    def __class_getitem__(cls, registry: str) -> Any:
        return typing.Annotated[dict, SpecMarker(registry)]


# The specs of the template's own arguments, by name (an annotation names a type, not a string).
DatasetSpec = Spec['datasets']
TransformSpec = Spec['transforms']
ModelSpec = Spec['models']
LossSpec = Spec['losses']
OptimizerSpec = Spec['optimizers']
SchedulerSpec = Spec['schedulers']
MetricSpec = Spec['metrics']
