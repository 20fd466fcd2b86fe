"""Experiment trackers named in a config's `loggers` list (MLflow, W&B, ...), beside the folder's
own metrics.csv and tb/: their defaults, the run id kept in `trackers.yaml` so that a resume
continues the same tracker run, and the guard that turns a failing tracker into one warning.

Lightning-free: train.py logs through `MLFlowLogger` and `WandbLogger` below (their own clients,
the argument names of Lightning's loggers of the same names, so one config serves both entry
points); callbacks/tracker_logger.py wraps Lightning's loggers in the same `TrackedRun`.
"""
from __future__ import annotations

import inspect
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from lightyaml.config.loading import Config, dump_yaml, parse_yaml
from lightyaml.config.secrets import mask_secrets, mask_text, mask_url
from lightyaml.errors import ConfigError, display_path
from lightyaml.run.experiment_dir import ExperimentDir, atomic_write
from lightyaml.run.metrics_files import event_file_suffix

# Set by a sweep (lightyaml/launch/sweep.py) for each of its runs: the trackers' group / experiment name.
GROUP_ENV = 'LIGHTYAML_GROUP'
DEFAULT_PROJECT = 'lightyaml'   # MLflow experiment and W&B project of a run outside a sweep
RUNS_FILE = 'trackers.yaml'


def resume_argument(name: str, accepted: Sequence[str]) -> Optional[str]:
    """The argument that reopens a tracker's run: MLflow's `run_id`, else `version` (W&B's run id,
    TensorBoardLogger's version folder). None for CSVLogger: it deletes the metrics.csv of a version
    it reopens, so a resume writes a version of its own and nothing is lost."""
    if name == 'MLFlowLogger':
        return 'run_id'
    if name == 'CSVLogger':
        return None
    return 'version' if 'version' in accepted else None


def check_trackers_reachable(cfg: Config, timeout: float = 5.0) -> None:
    """Before anything is created: every tracker server the config's `loggers` would talk to
    (MLflow's http(s) `tracking_uri` or MLFLOW_TRACKING_URI, W&B online) answers a connection, or
    one line naming the key (or variable) and the URL, its password masked."""
    problems = []
    for i, spec in enumerate(cfg.get('loggers') or []):
        args = spec.get('args') or {}
        if spec.get('name') == 'MLFlowLogger' and args.get('tracking_uri'):
            problem = unreachable(args['tracking_uri'], timeout)
            problems += [cfg.error(f'loggers.{i}.args.tracking_uri', problem)] if problem else []
        elif spec.get('name') == 'MLFlowLogger':
            problem = unreachable(os.environ.get('MLFLOW_TRACKING_URI', ''), timeout)
            problems += [f'MLFLOW_TRACKING_URI (for loggers.{i}): {problem}'] if problem else []
        elif spec.get('name') == 'WandbLogger' and wandb_online(args):
            problem = unreachable(os.environ.get('WANDB_BASE_URL', 'https://api.wandb.ai'), timeout)
            problems += [cfg.error(f'loggers.{i}', f'W&B online: {problem}')] if problem else []
    if problems:
        raise ConfigError(*problems)


def wandb_online(args: Mapping) -> bool:
    """Whether W&B would log to its server: an API key and no offline or disabled mode."""
    modes = {args.get('mode'), os.environ.get('WANDB_MODE')}
    return bool(os.environ.get('WANDB_API_KEY')) and not args.get('offline') and not {'offline', 'disabled'} & modes


def unreachable(url: str, timeout: float) -> Optional[str]:
    """Why the server of an http(s) `url` does not answer a connection, or None (and None for a
    local store: file:, sqlite, a path)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == 'https' else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as e:
        return (f'cannot reach {mask_url(url)} ({type(e).__name__}: {mask_text(str(e))}); '
                f'start the server, fix the URL or leave the tracker out')
    return None


def tracker_args(name: str, args: Mapping, accepted: Sequence[str], exp: ExperimentDir,
                 previous: Mapping) -> dict:
    """The config's arguments plus the defaults that need no setting: the local store inside the
    experiment folder, the run named after the experiment, the sweep as group, the run id of an
    earlier session (`previous`, from trackers.yaml) on resume. What the config gives wins."""
    args = dict(args)
    group = previous.get('group') or os.environ.get(GROUP_ENV)

    def default(key: str, value: Any) -> None:
        if key in accepted and args.get(key) is None and value is not None:
            args[key] = value
    if name == 'MLFlowLogger':
        if not args.get('tracking_uri') and not os.environ.get('MLFLOW_TRACKING_URI'):
            args['tracking_uri'] = f'file:{exp.path.resolve() / "mlruns"}'
            # MLflow 3 keeps its file store only on request; it is the offline store that needs no database.
            os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')
        default('tracking_uri', os.environ.get('MLFLOW_TRACKING_URI'))
        default('experiment_name', group or os.environ.get('MLFLOW_EXPERIMENT_NAME') or DEFAULT_PROJECT)
        default('run_name', exp.path.name)
    elif name == 'WandbLogger':
        default('name', exp.path.name)
        default('project', os.environ.get('WANDB_PROJECT') or DEFAULT_PROJECT)
        if group and 'group' not in args:
            args['group'] = group   # Lightning's WandbLogger passes it on to wandb.init
        if not (args.get('offline') or 'mode' in args or os.environ.get('WANDB_MODE')
                or os.environ.get('WANDB_API_KEY')):
            # wandb.init's own `mode` (Lightning's `offline: true` only sets WANDB_MODE, which a
            # second run in the same process would not read)
            args['mode'] = 'offline'
    default('save_dir', str(exp.path))   # W&B: save/<name>/wandb/; CSVLogger, TensorBoardLogger: below the folder
    key = resume_argument(name, accepted)
    if key is not None:
        default(key, previous.get(key))
    return args


def read_runs(exp: ExperimentDir) -> dict:
    """trackers.yaml: `{'loggers.0': {'name': ..., 'group': ..., 'run_id' or 'version': ...}}`."""
    path = exp.path / RUNS_FILE
    return (parse_yaml(path.read_text(), str(path)) or {}) if path.is_file() else {}


def record_run(exp: ExperimentDir, key: str, entry: Mapping) -> None:
    """Keep one tracker's run in trackers.yaml, for the next resume."""
    runs = read_runs(exp)
    runs[key] = dict(entry)
    atomic_write(exp.path / RUNS_FILE, dump_yaml(mask_secrets(runs)))


def init_parameters(cls: type) -> list[str]:
    """The keyword arguments a class's constructor names."""
    parameters = inspect.signature(cls).parameters.items()
    return [n for n, p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


class TrackerGuard:
    """Calls into one tracker. The first exception prints one warning naming it (also in log.txt)
    and switches the tracker off: training goes on and the folder's own logs stay complete."""

    def __init__(self, label: str, exp: ExperimentDir) -> None:
        self.label, self.exp = label, exp
        self.off = False

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`, or None when it raises or the tracker is already off."""
        if self.off:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.off = True
            detail = mask_text((str(e).strip().splitlines() or [''])[0])[:300]   # it may quote the tracker's URL
            message = (f'warning: logger {self.label} failed ({type(e).__name__}: {detail}); it gets no more calls '
                       f'in this run, training goes on, {display_path(self.exp.path)}/metrics.csv, tb/ and log.txt '
                       f'keep every metric')
            print(message, file=sys.stderr, flush=True)
            if self.exp.started:
                self.exp.log(message)
            return None


class TrackedRun:
    """One entry of `loggers`: built when the experiment folder exists (so that a local store lands
    inside it) on the process that created it, the merged config logged once when the tracker's
    run begins, its run id kept in trackers.yaml, every call guarded.

    Args:
        key: the entry's key path, e.g. `loggers.0`; spec: its `{name, args}`; cls: the class to build.
        exp: the experiment folder; config: the merged config; resume: this session continues a run.
    """

    def __init__(self, key: str, spec: Mapping, cls: type, exp: ExperimentDir, config: Mapping,
                 resume: bool) -> None:
        self.key, self.name, self.exp = key, spec['name'], exp
        self._args, self._cls, self._config, self._resume = dict(spec.get('args') or {}), cls, dict(config), resume
        self.guard = TrackerGuard(f'{key} ({self.name})', exp)
        self.logger: Any = None

    def started(self) -> Any:
        """The tracker's logger, started on first use; None before the folder exists, on other
        processes, and once the tracker failed."""
        if self.logger is None and self.exp.started and not self.guard.off:
            self.guard.call(self._start)
        return None if self.guard.off else self.logger

    def _start(self) -> None:
        previous = read_runs(self.exp).get(self.key, {}) if self._resume else {}
        if previous.get('name') != self.name:
            previous = {}
        accepted = init_parameters(self._cls)
        args = tracker_args(self.name, self._args, accepted, self.exp, previous)
        if any(c.__name__ == 'TensorBoardLogger' for c in self._cls.__mro__):
            args.setdefault('filename_suffix', event_file_suffix())   # passed on to its SummaryWriter
        logger = self._cls(**args)
        if not previous:   # a continued run has the config already (MLflow refuses changed params)
            logger.log_hyperparams(mask_secrets(self._config))   # the tracker stores it: no secrets
        entry = {'name': self.name, 'group': previous.get('group') or os.environ.get(GROUP_ENV)}
        key = resume_argument(self.name, accepted)
        if key is not None:
            entry[key] = getattr(logger, key)
        record_run(self.exp, self.key, entry)
        self.logger = logger

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call one of the logger's methods, guarded (nothing before it starts or after it failed)."""
        logger = self.started()
        if logger is not None and hasattr(logger, method):
            self.guard.call(getattr(logger, method), *args, **kwargs)

    def finish(self, status: str) -> None:
        """End the tracker's run ('success' or 'failed')."""
        if self.logger is not None:
            self.guard.call(self.logger.finalize, status)


class TrackedRuns(list):
    """The TrackedRuns of a config's `loggers`, as train.py calls them."""

    def start(self) -> None:
        """Begin every tracker's run (once the experiment folder exists)."""
        for run in self:
            run.started()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Send metric values (metrics.csv's row) to every tracker."""
        for run in self:
            run.call('log_metrics', metrics, step)

    def finish(self, status: str) -> None:
        """End every tracker's run: 'success' or 'failed'."""
        for run in self:
            run.finish(status)


def make_tracked_runs(specs: Sequence[Mapping], classes: Callable[[str], type], exp: ExperimentDir,
                      config: Mapping, resume: bool) -> TrackedRuns:
    """A TrackedRun per entry of `loggers`; `classes` gives the class of a name."""
    return TrackedRuns(TrackedRun(f'loggers.{i}', spec, classes(spec['name']), exp, config, resume)
                       for i, spec in enumerate(specs))


# ------------------------------------------------------------- train.py's trackers, without Lightning

def flatten(params: Mapping, prefix: str = '') -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a/b': 1}, as Lightning flattens hyper-parameters."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f'{prefix}{key}/'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


class Tracker:
    """A tracker train.py logs to through the tracker's own client, with the methods of a
    Lightning logger that TrackedRun calls."""

    def log_hyperparams(self, params: Mapping) -> None:
        """Record the merged config."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at an optimizer step."""

    def finalize(self, status: str) -> None:
        """End the run: 'success' or 'failed'."""


class MLFlowLogger(Tracker):
    """MLflow through `MlflowClient`; the arguments and behaviour of Lightning's MLFlowLogger."""

    def __init__(self, experiment_name: str = 'lightning_logs', run_name: Optional[str] = None,
                 tracking_uri: Optional[str] = None, tags: Optional[dict[str, Any]] = None,
                 save_dir: Optional[str] = './mlruns', prefix: str = '', artifact_location: Optional[str] = None,
                 run_id: Optional[str] = None) -> None:
        from mlflow.tracking import MlflowClient  # optional: only with an MLflow logger
        self.client = MlflowClient(tracking_uri or f'file:{save_dir}')
        if run_id is None:
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is not None and experiment.lifecycle_stage != 'deleted':
                experiment_id = experiment.experiment_id
            else:
                experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifact_location)
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        else:
            self.client.get_run(run_id)   # a run that is gone fails here, once
        self.run_id, self.prefix = run_id, prefix

    def log_hyperparams(self, params: Mapping) -> None:
        from mlflow.entities import Param  # optional: only with an MLflow logger
        items = [Param(k, str(v)[:250]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):   # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric  # optional: only with an MLflow logger
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(self.prefix + k, float(v), now, step)
                                                    for k, v in metrics.items()])

    def finalize(self, status: str) -> None:
        self.client.set_terminated(self.run_id, 'FINISHED' if status == 'success' else 'FAILED')


class WandbLogger(Tracker):
    """Weights & Biases through `wandb.init`; the arguments and behaviour of Lightning's WandbLogger
    (metrics against `trainer/global_step`, `resume='allow'`)."""

    def __init__(self, name: Optional[str] = None, save_dir: str = '.', version: Optional[str] = None,
                 offline: bool = False, id: Optional[str] = None, project: Optional[str] = None,
                 prefix: str = '', group: Optional[str] = None, tags: Optional[list[str]] = None,
                 entity: Optional[str] = None, notes: Optional[str] = None, mode: Optional[str] = None) -> None:
        import wandb  # optional: only with a W&B logger
        self.run = wandb.init(name=name, project=project, dir=save_dir, id=version or id, resume='allow',
                              group=group, tags=tags, entity=entity, notes=notes,
                              mode='offline' if offline else mode)
        self.run.define_metric('trainer/global_step')
        self.run.define_metric('*', step_metric='trainer/global_step', step_sync=True)
        self.version, self.prefix = self.run.id, prefix

    def log_hyperparams(self, params: Mapping) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({**{self.prefix + k: float(v) for k, v in metrics.items()}, 'trainer/global_step': step})

    def finalize(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == 'success' else 1)
