"""What a `--search search.yaml` file says: the parameters (dotted config keys with `float`, `int`
or `choice` ranges), the metric and its direction, the sampler, the pruner and how many trials;
and the Optuna objects made from it. Optuna is imported only where one is made.

    n_trials: 20                     # trials run to an end (complete, pruned or failed); a grid: its size
    metric: val/acc                  # default: the config's checkpoint.monitor
    direction: maximize              # default: from checkpoint.mode (max: maximize)
    sampler: {name: tpe, args: {seed: 0}}            # tpe | random | grid
    pruner: {name: median, args: {n_warmup_steps: 1}}  # median | percentile | successive_halving | hyperband |
                                                       # threshold | none
    params:
      train_wrapper.args.optim_spec.args.lr: {float: [1e-4, 1e-2], log: true}
      data_module.args.batch_size: {int: [16, 64], step: 16}
      train_wrapper.args.model_spec.args.hidden: {choice: [[128], [256, 256]]}
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from lightyaml.config.checking import check_kwargs
from lightyaml.config.loading import Config, dump_yaml, parse_yaml
from lightyaml.errors import ConfigError, did_you_mean, display_path

SAMPLERS = {'tpe': 'TPESampler', 'random': 'RandomSampler', 'grid': 'GridSampler'}
PRUNERS = {'median': 'MedianPruner', 'percentile': 'PercentilePruner', 'successive_halving': 'SuccessiveHalvingPruner',
           'hyperband': 'HyperbandPruner', 'threshold': 'ThresholdPruner', 'none': 'NopPruner'}
_KEYS = ('n_trials', 'metric', 'direction', 'sampler', 'pruner', 'params')
_RANGE_KEYS = {'float': ('log', 'step'), 'int': ('log', 'step'), 'choice': ()}


@dataclasses.dataclass
class Param:
    """One searched config key: `kind` float/int/choice; `low`/`high` or `choices`."""
    key: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    def grid_values(self) -> list:
        """The values a grid search tries: every choice, or every int of the range."""
        if self.kind == 'choice':
            return list(self.choices)
        return list(range(self.low, self.high + 1, self.step or 1))

    def edge_values(self) -> list:
        """Values worth validating before a search starts: the ends of a range, every choice."""
        return list(self.choices) if self.kind == 'choice' else [self.low, self.high]


def yaml_text(value: Any) -> str:
    """A value as the YAML text of an override: `1.0e-06`, `[128, 64]`."""
    return dump_yaml(value).strip().removesuffix('...').strip()


def choice_label(value: Any) -> Any:
    """Optuna's categorical choices must be scalars: a list or mapping becomes its YAML text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml_text(value)


@dataclasses.dataclass
class SearchSpec:
    """A search file, checked: see the module docstring."""
    path: Path
    params: list[Param]
    n_trials: int
    metric: str
    direction: str
    sampler: dict
    pruner: dict

    def definition(self) -> dict:
        """What identifies the search (with the config): a study is only continued by the same."""
        return {'metric': self.metric, 'direction': self.direction,
                'params': {p.key: {k: v for k, v in dataclasses.asdict(p).items() if v not in (None, (), False)}
                           for p in self.params}}

    def suggest(self, trial: Any) -> list[str]:
        """The trial's values as config overrides, `key=value` (parsed as YAML by the run)."""
        overrides = []
        for p in self.params:
            if p.kind == 'float':
                value = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
            elif p.kind == 'int':
                value = trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
            else:
                label = trial.suggest_categorical(p.key, [choice_label(c) for c in p.choices])
                value = {choice_label(c): c for c in p.choices}[label]
            overrides.append(f'{p.key}={yaml_text(value)}')
        return overrides

    def grid_size(self) -> Optional[int]:
        """How many points a grid sampler has (None for other samplers)."""
        if self.sampler['name'] != 'grid':
            return None
        return len(list(itertools.product(*(p.grid_values() for p in self.params))))

    def edge_overrides(self) -> list[list[str]]:
        """Override lists that together try every parameter's edge values, for validation."""
        edges = [p.edge_values() for p in self.params]
        return [[f'{p.key}={yaml_text(values[min(i, len(values) - 1)])}' for p, values in zip(self.params, edges)]
                for i in range(max(map(len, edges)))]


def read_search(path: str, cfg: Config) -> SearchSpec:
    """Read and check a search file against the config it searches; every problem one line."""
    shown = display_path(Path(path))
    if not Path(path).is_file():
        raise ConfigError(f'--search {path}: no such file')
    data = parse_yaml(Path(path).read_text(), shown)
    if not isinstance(data, Mapping):
        raise ConfigError(f'{shown}: expected a mapping with params, n_trials, sampler, pruner, ...')
    where = Config({}, {'': shown})
    problems = [where.error(k, f'unknown key{did_you_mean(k, _KEYS)}; a search file has {", ".join(_KEYS)}')
                for k in data if k not in _KEYS]
    params = [_read_param(key, value, shown, problems) for key, value in (data.get('params') or {}).items()]
    if not params:
        problems.append(f'{shown}: params: give at least one, e.g. train_wrapper.args.optim_spec.args.lr: '
                        f'{{float: [1e-4, 1e-2], log: true}}')
    checkpoint = cfg.get('checkpoint') or {}
    metric = data.get('metric') or checkpoint.get('monitor') or 'val/loss'
    direction = data.get('direction') or ('maximize' if checkpoint.get('mode') == 'max' else 'minimize')
    if direction not in ('minimize', 'maximize'):
        problems.append(f"{shown}: direction: expected minimize or maximize, got {direction!r}")
    sampler = _read_choice(data.get('sampler') or {'name': 'tpe'}, 'sampler', SAMPLERS, where, problems)
    pruner = _read_choice(data.get('pruner') or {'name': 'median'}, 'pruner', PRUNERS, where, problems)
    if sampler.get('name') == 'grid' and any(p.kind == 'float' for p in params):
        problems.append(f'{shown}: sampler: grid needs int or choice params, not float ones '
                        f'({", ".join(p.key for p in params if p.kind == "float")})')
    spec = SearchSpec(Path(path), params, 0, str(metric), direction, sampler, pruner)
    n_trials = data.get('n_trials', spec.grid_size() if not problems else 1)
    if n_trials is None:
        problems.append(f'{shown}: n_trials: missing: how many trials to run, e.g. n_trials: 20 (a grid sampler '
                        f'runs its grid by default)')
    elif not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        problems.append(f'{shown}: n_trials: expected a positive whole number, got {n_trials!r}')
    if problems:
        raise ConfigError(*problems)
    spec.n_trials = n_trials
    return spec


def _read_param(key: Any, value: Any, shown: str, problems: list[str]) -> Param:
    where = f'{shown}: params.{key}'
    kinds = [k for k in _RANGE_KEYS if isinstance(value, Mapping) and k in value]
    if len(kinds) != 1:
        problems.append(f'{where}: expected one of {{float: [low, high]}}, {{int: [low, high]}} or {{choice: [a, b]}}'
                        f', got {value!r}')
        return Param(str(key), 'choice', choices=(None,))
    kind = kinds[0]
    extra = [k for k in value if k not in (kind, *_RANGE_KEYS[kind])]
    if extra:
        problems.append(f'{where}: {kind} does not take {", ".join(map(repr, extra))}'
                        f'{did_you_mean(extra[0], _RANGE_KEYS[kind])}')
    values = value[kind]
    if kind == 'choice':
        if not isinstance(values, list) or not values:
            problems.append(f'{where}: choice: expected a list of values, got {values!r}')
            values = [None]
        return Param(str(key), kind, choices=tuple(values))
    number = (int,) if kind == 'int' else (int, float)
    if (not isinstance(values, list) or len(values) != 2 or not all(isinstance(v, number) and not isinstance(v, bool)
                                                                     for v in values) or values[0] > values[1]):
        problems.append(f'{where}: {kind}: expected [low, high] with low <= high, got {values!r}')
        values = [1, 1]
    if value.get('log') and values[0] <= 0:
        problems.append(f'{where}: log: needs a positive low end, got {values[0]!r}')
    return Param(str(key), kind, values[0], values[1], bool(value.get('log')), value.get('step'))


def _read_choice(spec: Any, key: str, known: Mapping[str, str], where: Config, problems: list[str]) -> dict:
    """A `{name, args}` sampler or pruner spec, its args checked against the Optuna class."""
    if isinstance(spec, str):
        spec = {'name': spec}
    if not isinstance(spec, Mapping) or spec.get('name') not in known:
        name = spec.get('name') if isinstance(spec, Mapping) else spec
        problems.append(where.error(f'{key}.name', f'unknown {key} {name!r}{did_you_mean(str(name), known)}; '
                                                   f'known: {", ".join(known)}'))
        return {'name': None, 'args': {}}
    args = dict(spec.get('args') or {})
    if spec['name'] != 'grid':   # GridSampler's search space comes from params
        import optuna  # optional: only for --search
        module = optuna.samplers if key == 'sampler' else optuna.pruners
        check_kwargs(getattr(module, known[spec['name']]), args, f'{key}.args', where, problems, known[spec['name']])
    return {'name': spec['name'], 'args': args}


def make_sampler(spec: SearchSpec, seed_offset: int = 0) -> Any:
    """The Optuna sampler; a grid sampler's points are the int and choice params' values."""
    import optuna  # optional: only for --search
    args = dict(spec.sampler['args'])
    if args.get('seed') is not None:
        args['seed'] += seed_offset
    if spec.sampler['name'] == 'grid':
        space = {p.key: [choice_label(v) for v in p.grid_values()] for p in spec.params}
        return _GridSampler(space, **args)
    return getattr(optuna.samplers, SAMPLERS[spec.sampler['name']])(**args)


def _grid_sampler_class() -> Any:
    import optuna  # optional: only for --search

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid, less its `study.stop()` once every point has run: that works only inside
        `study.optimize`; the workers here stop when the study has n_trials (the grid's size)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass
    return GridSampler


def _GridSampler(*args: Any, **kwargs: Any) -> Any:
    return _grid_sampler_class()(*args, **kwargs)


def make_pruner(pruner: Mapping) -> Any:
    """The Optuna pruner of a `{name, args}` spec (the trial process makes the same one)."""
    import optuna  # optional: only for --search
    return getattr(optuna.pruners, PRUNERS[pruner['name']])(**(pruner.get('args') or {}))


def open_storage(url: str, heartbeat: bool = False) -> Any:
    """Optuna's database storage (a postgresql:// URL through psycopg2 when psycopg 3 is absent).
    SQLite waits up to a minute for a lock instead of failing at once, as several processes
    (workers and their trials) write to one file. With `heartbeat`, a trial whose worker stopped
    beating for 2 minutes is failed and retried (workers on other machines)."""
    import optuna  # optional: only for --search
    if url.startswith(('postgresql://', 'postgres://')) and importlib.util.find_spec('psycopg') is None:
        url = 'postgresql+psycopg2://' + url.split('://', 1)[1]   # SQLAlchemy 2.1 assumes psycopg 3
    engine_kwargs = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {}
    extra = {}
    if heartbeat:
        extra = dict(heartbeat_interval=HEARTBEAT_SECONDS, grace_period=4 * HEARTBEAT_SECONDS,
                     heartbeat_stale_trial_callback=retry)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **extra)


HEARTBEAT_SECONDS = 30
MAX_RETRIES = 2   # a trial whose worker died is run again at most this often


def retry(study: Any, trial: Any) -> None:
    """Queue a failed trial again with its parameters, folder and reported values (its process
    continues the folder from its last checkpoint)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback  # optional: only for --search
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)(study, trial)
