"""Constructor arguments that take objects, given in YAML as `{name, args}` specs.

Code from elsewhere takes objects, not specs: lightning-hydra-template's module takes
`net: torch.nn.Module` and calls `self.hparams.optimizer(params=...)` on an `optimizer:
torch.optim.Optimizer` (a partially applied class); a LightningCLI module takes `OptimizerCallable`.
A `{name, args}` value for such a parameter is built from the registry its annotation names:

- an object, built (`registry.make`), for a parameter annotated with a class whose bases include
  `nn.Module` (models, then losses), a LightningModule, a LightningDataModule, a Dataset, a
  torchmetrics Metric, a Lightning Callback or Logger;
- a factory, `functools.partial(cls, **args)`, for a parameter annotated with an optimizer or a
  scheduler class (or the modules `torch.optim`, `torch.optim.lr_scheduler`), `Callable[..., R]`
  (the registry of R: `OptimizerCallable`, `LRSchedulerCallable`), a bare `Callable` or
  `functools.partial` (the first registry that has the name).

Hydra's marker `_partial_` in the spec decides where the annotation does not: `_partial_: true`
gives a factory and `_partial_: false` the object, for a parameter of any annotation. Any other
value, and a spec for a `Spec[...]` parameter (the template's own convention), is passed as it is.
Torch-free and Lightning-free: classes are known by their bases' dotted names.
"""
from __future__ import annotations

import collections.abc
import copy
import functools
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from lightyaml.built_specs import remember_spec

PARTIAL = '_partial_'   # Hydra's marker: true, a factory; false, the object
# Bases (most specific first) whose parameters take a built object, and the registries of its name.
OBJECTS = {'pytorch_lightning.core.module.LightningModule': ('wrappers',),
           'pytorch_lightning.core.datamodule.LightningDataModule': ('data_modules',),
           'torchmetrics.metric.Metric': ('metrics',),
           'torch.nn.modules.module.Module': ('models', 'losses'),
           'torch.utils.data.dataset.Dataset': ('datasets',),
           'pytorch_lightning.callbacks.callback.Callback': ('callbacks',),
           'pytorch_lightning.loggers.logger.Logger': ('loggers',)}
# ... and those that take a factory: the class with the spec's args bound.
FACTORIES = {'torch.optim.optimizer.Optimizer': ('optimizers',),
             'torch.optim.lr_scheduler.LRScheduler': ('schedulers',),
             'torch.optim.lr_scheduler.ReduceLROnPlateau': ('schedulers',)}
FACTORY_MODULES = {'torch.optim': ('optimizers',), 'torch.optim.lr_scheduler': ('schedulers',)}
ANYWHERE = ('optimizers', 'schedulers', 'models', 'losses', 'metrics', 'datasets', 'transforms', 'wrappers',
            'data_modules', 'callbacks', 'loggers')


@dataclass(frozen=True)
class Takes:
    """What a parameter makes of a spec: a factory (a partial) or the built object, and where its
    name is looked up, in order."""
    factory: bool
    registries: tuple[str, ...]


def signature_hints(target: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    """`target`'s signature and its parameters' resolved annotations (the raw ones where a forward
    reference does not resolve)."""
    signature = inspect.signature(target)
    init = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {name: p.annotation for name, p in signature.parameters.items()}
    return signature, hints


def takes(annotation: Any, value: Any) -> Optional[Takes]:
    """How a parameter annotated `annotation` takes `value`: a `{name: ..}` mapping for a parameter
    that takes an object or a factory (or marked `_partial_`), else None: passed as it is."""
    if not (isinstance(value, Mapping) and isinstance(value.get('name'), str)):
        return None
    found = _annotated(annotation)
    if PARTIAL not in value:
        return found
    return Takes(bool(value[PARTIAL]), found.registries if found else ANYWHERE)


def _dotted_bases(cls: type) -> set[str]:
    return {f'{c.__module__}.{c.__qualname__}' for c in getattr(cls, '__mro__', ())}


def _kinds(annotation: Any, table: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The registries `table` gives a class (or each class of a Union) by its bases."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(dict.fromkeys(k for a in typing.get_args(annotation) for k in _kinds(a, table)))
    bases = _dotted_bases(annotation) if inspect.isclass(annotation) else set()
    return next((kinds for base, kinds in table.items() if base in bases), ())


def _annotated(annotation: Any) -> Optional[Takes]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return None   # `Spec[...]`: the template's own convention, the spec itself
    if origin in (typing.Union, types.UnionType):
        return next((t for t in map(_annotated, args) if t is not None), None)
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        returns = args[-1] if args else None
        return Takes(True, _kinds(returns, FACTORIES) or _kinds(returns, OBJECTS) or ANYWHERE)
    if annotation is functools.partial or origin is functools.partial:
        return Takes(True, ANYWHERE)
    if isinstance(annotation, types.ModuleType):
        kinds = FACTORY_MODULES.get(annotation.__name__)
        return Takes(True, kinds) if kinds else None
    if _kinds(annotation, FACTORIES):
        return Takes(True, _kinds(annotation, FACTORIES))
    if _kinds(annotation, OBJECTS):
        return Takes(False, _kinds(annotation, OBJECTS))
    return None


def registry_with(how: Takes, name: str, registries: Mapping[str, Any]) -> Any:
    """The first of `how`'s registries that has `name` (the first of them where none has)."""
    candidates = [registries[k] for k in how.registries]
    return next((r for r in candidates if r.has(name)), candidates[0])


def build_object(how: Takes, spec: Mapping, registries: Mapping[str, Any]) -> Any:
    """The object or factory a spec stands for; a factory remembers its spec as a built object does."""
    registry = registry_with(how, spec['name'], registries)
    plain = {k: v for k, v in spec.items() if k != PARTIAL}
    if not how.factory:
        return registry.make(plain)
    factory = functools.partial(registry.get(spec['name']), **copy.deepcopy(dict(spec.get('args') or {})))
    remember_spec(factory, registry.kind, plain)
    return factory


def built_objects(target: Any, kwargs: Mapping, registries: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` for `target` with each spec that a parameter takes as an object built."""
    try:
        _, hints = signature_hints(target)
    except (TypeError, ValueError):   # no signature to read (a builtin): nothing to build
        return dict(kwargs)
    out = {}
    for name, value in kwargs.items():
        how = takes(hints.get(name, inspect.Parameter.empty), value)
        out[name] = value if how is None else build_object(how, value, registries)
    return out
