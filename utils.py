"""What user code imports: the errors a user's input can cause, the registries, and `Spec`.

Sections, top to bottom:
  errors      ConfigError (printed as one line, exit status 2), NonFiniteLossError, NothingToDo,
              ExportCheckError, did_you_mean
  registries  Registry, ClassNamespace and every extension point of the template, one line each
  process     thread defaults for shared machines, garbage collection around start-up and exit,
              the global rank as launchers set it, glibc's memory policy, display paths

Lightning-free and torch-free at import: train.py and `--list` import it first. Where the rest
lives: configs/ (loading, checking, the command line, sweeps), callbacks/ (the experiment folder,
its files, checkpoints), models/optim.py (optimizers and schedulers), models/task.py (the loss
bookkeeping both entry points share). The README's Layout section maps every concern to its file.
"""
from __future__ import annotations

import copy
import difflib
import gc
import importlib
import inspect
import os
import pkgutil
import typing
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from configs.built_specs import built, copy_specs, spec_of  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from configs.loading import Config

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
        self.cause = (f"non-finite training loss in epoch {epoch} (between {steps}): "
                      f"{', '.join(terms)} became NaN or infinite; training stopped")
        super().__init__(f'{self.cause}, the last good checkpoint is kept')

    def no_checkpoint(self) -> 'NonFiniteLossError':
        """Say so when no checkpoint was saved before it (a NaN in the first epoch)."""
        self.args = (f'{self.cause} before any checkpoint was saved (nothing to resume; fix the cause and '
                     f'start again with --overwrite)',)
        return self


class NothingToDo(Exception):
    """The command has nothing to do (a finished run resumed): said on stdout, exit status 0,
    nothing created or changed."""


class ExportCheckError(Exception):
    """An exported model's outputs differ from the PyTorch model's (--export); nothing is kept."""


class DuplicateNameError(ValueError):
    """Two classes registered under one name; the message names both definitions."""


class ModuleFileError(ConfigError):
    """A file of a registry's package failed to import: `models/x.py:3: SyntaxError: ...`. It is
    reported as it is, not as a problem of the config key that asked for the registry."""


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
        return built(self.kind, spec, lambda: self.get(spec['name'])(**kwargs))   # configs/built_specs.py


class ClassNamespace(Registry):
    """A read-only registry over an existing module, e.g. every optimizer in `torch.optim` or every
    transform in `torchvision.transforms.v2`."""

    def __init__(self, kind: str, module: str, base: str, extra_keys: tuple[str, ...] = (),
                 check: Optional[Callable[..., None]] = None, spec_lists: tuple[str, ...] = ()) -> None:
        super().__init__(kind, check=check)
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
    import traceback
    inside = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve().parent == file.resolve().parent]
    if inside:
        return f'{display_path(Path(inside[-1].filename))}:{inside[-1].lineno}: {message}'
    return f'{display_path(file)}: {message}'


class TorchvisionModels(Registry):
    """Every torchvision classification model as `torchvision.<name>` (read-only), built by the
    adapter class `adapter` names (models/torchvision_models.py: the batch's image in, logits out,
    `in_channels` and `image_key` as options). torchvision is imported when a name is looked up."""

    def __init__(self, kind: str, adapter: str) -> None:
        super().__init__(kind)
        self.adapter = adapter

    def _import_package(self) -> None:
        if self._imported:
            return
        self._imported = True
        import torchvision
        adapter = _import_object(self.adapter)
        for name in torchvision.models.list_models(module=torchvision.models):
            self._classes[f'torchvision.{name}'] = adapter.for_builder(name)




def _import_object(dotted: str) -> Any:
    module, _, name = dotted.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _defined_at(obj: Any) -> str:
    try:
        line = inspect.getsourcelines(obj)[1]
        return f'{display_path(Path(inspect.getsourcefile(obj)))}:{line} ({obj.__module__}.{obj.__qualname__})'
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
    from configs.checking import check_spec   # configs imports utils: import at use
    if not isinstance(spec, Mapping) or not isinstance(spec.get('args'), Mapping):
        return
    if isinstance(spec['args'].get('transforms'), list):
        for i, item in enumerate(spec['args']['transforms']):
            check_spec(TRANSFORMS, item, f'{key}.args.transforms.{i}', cfg, problems)


# Every extension point of the template. A package's own `register`/`make` are these objects.
DATASETS = Registry('dataset', 'datasets', check=check_dataset_spec)
DATA_MODULES = Registry('data module', 'datasets')
MODELS = Registry('model', 'models',                          # + every torchvision classifier, by name
                  fallback=TorchvisionModels('model', 'models.torchvision_models.TorchvisionClassifier'))
LOSSES = Registry('loss', 'losses')
WRAPPERS = Registry('training wrapper', 'models.wrappers')    # LightningModules: train_pl.py only
CALLBACKS = Registry('callback', 'callbacks',                 # Lightning callbacks: train_pl.py only
                     fallback=ClassNamespace('callback', 'pytorch_lightning.callbacks',   # + its built-ins
                                             'pytorch_lightning.callbacks.Callback'))
LOGGERS = Registry('logger', 'callbacks',                     # Lightning loggers (`loggers:`): train_pl.py
                   fallback=ClassNamespace('logger', 'pytorch_lightning.loggers', 'pytorch_lightning.loggers.Logger'))
TRACKERS = ClassNamespace('train.py logger', 'callbacks.trackers',   # MLflow and W&B by their own clients: train.py
                          'callbacks.trackers.Tracker')
OPTIMIZERS = ClassNamespace('optimizer', 'torch.optim', 'torch.optim.Optimizer')
SCHEDULERS = ClassNamespace('scheduler', 'torch.optim.lr_scheduler', 'torch.optim.lr_scheduler.LRScheduler',
                            extra_keys=('interval', 'frequency', 'monitor', 'warmup'), check=check_scheduler_spec)
METRICS = ClassNamespace('metric', 'torchmetrics', 'torchmetrics.Metric')
TRANSFORMS = ClassNamespace('transform', 'torchvision.transforms.v2', 'torchvision.transforms.v2.Transform',
                            check=check_transform_spec, spec_lists=('transforms',))   # a dataset's `transforms`
REGISTRIES = {'datasets': DATASETS, 'data_modules': DATA_MODULES, 'models': MODELS, 'losses': LOSSES,
              'wrappers': WRAPPERS, 'callbacks': CALLBACKS, 'loggers': LOGGERS, 'optimizers': OPTIMIZERS,
              'schedulers': SCHEDULERS, 'metrics': METRICS,
              'transforms': TRANSFORMS}


class SpecMarker(typing.NamedTuple):
    registry: str


class Spec:
    """Annotation of an argument that takes a `{name, args}` spec: `model_spec: Spec['models']`.

    The config validator follows these annotations into nested specs.
    """

    def __class_getitem__(cls, registry: str) -> Any:
        return typing.Annotated[dict, SpecMarker(registry)]

def list_registered(kinds: Sequence[str] = ()) -> str:
    """Text listing every registered name, for `--list [kind]`. It imports neither Lightning nor
    torch when it can help it (configs/listing.py), so that it answers in a fraction of a second."""
    from configs.listing import listed_names
    unknown = [k for k in kinds if k not in REGISTRIES]
    if unknown:
        raise ConfigError(f'--list {unknown[0]}: no such registry{did_you_mean(unknown[0], list(REGISTRIES))}; '
                          f'registries: {", ".join(REGISTRIES)}')
    lines = []
    for kind in kinds or REGISTRIES:
        lines.append(f'{kind}: {", ".join(listed_names(REGISTRIES[kind]))}')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------- process

SHARE_CORES = 'LIGHTYAML_SHARE_CORES'   # '0': training keeps its thread count (callbacks/core_share.py)


def set_thread_defaults(environ: MutableMapping[str, str] = os.environ,
                        cpu_count: Optional[int] = None) -> dict[str, str]:
    """Thread settings torch reads once, at import: the entry points call this first. What the
    user set is kept; OpenMP's wait policy too (PASSIVE made a small MLP 4-5x slower alone).

    - Several processes on one machine (LOCAL_WORLD_SIZE: torchrun, train.py's launcher) split
      its cores, OMP_NUM_THREADS = cores // processes, unless OMP_NUM_THREADS or MKL_NUM_THREADS
      is set (torchrun sets 1 unless you do). Lightning's DDP launcher makes the same split.
    - Runs share the cores while they train (callbacks/core_share.py) unless the user chose the
      thread count: LIGHTYAML_SHARE_CORES=0 then, decided by the first process and inherited by
      those it starts (whose OMP_NUM_THREADS the launchers set). Returns what was set."""
    chosen = {}
    user_threads = any(environ.get(var) for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'))
    if SHARE_CORES not in environ:
        chosen[SHARE_CORES] = '0' if user_threads else '1'
    processes = environ.get('LOCAL_WORLD_SIZE', '')
    if processes.isdigit() and int(processes) > 1 and not user_threads:
        cores = cpu_count or (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())
        chosen['OMP_NUM_THREADS'] = str(max(1, (cores or 1) // int(processes)))
    environ.update(chosen)
    return chosen


def pause_gc_for_start_up() -> None:
    """Start-up (torch, Lightning and their imports, then the run's objects) makes about 450,000
    objects that live as long as the process, and Python's cyclic garbage collector walks them all
    again at every full collection: a third of Lightning's import time on a 2-core machine. The
    entry points, run as scripts, pause it until training starts (`resume_gc`). Reference counting
    still frees everything that is not in a reference cycle at once."""
    gc.disable()


def resume_gc() -> None:
    """When training starts: what start-up made goes to the collector's permanent generation
    (`gc.freeze`; it lives as long as the run anyway) and collection resumes for what comes next,
    so later collections are quick too. Nothing happens unless collection was paused."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def skip_collections_at_exit() -> None:
    """At exit Python collects garbage over every object again while it tears the modules down:
    after importing Lightning that was longer than the whole run's last epoch. Frozen objects are
    left to the operating system (files are still closed and flushed: reference counting frees
    them). Call it just before a script's `sys.exit`."""
    gc.freeze()


def global_rank_from_env() -> int:
    """This process's global rank as the launchers (torchrun, SLURM, Lightning's DDP) set it."""
    for var in ('RANK', 'SLURM_PROCID'):
        if os.environ.get(var, '').isdigit() and (var != 'SLURM_PROCID' or int(os.environ.get('SLURM_NTASKS', '1')) > 1):
            return int(os.environ[var])
    return int(os.environ.get('NODE_RANK', '0') or 0) + int(os.environ.get('LOCAL_RANK', '0') or 0)


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


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith('..') else relative
