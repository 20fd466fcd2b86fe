"""Searches with Optuna: `--search search.yaml` (lightyaml/launch/search_space.py says what it holds).

Each trial is an experiment folder of its own, save/<name>-search/trial-007/, trained by a
process of its own (so a crash fails one trial, and DDP starts clean); that process reports the
monitored metric to the study after every validation and stops when the pruner says so
(lightyaml/launch/trial.py). The study lives in save/<name>-search/study.db (SQLite), or in the database
of `--storage URL`, which any number of machines may share: each worker asks the study for its
next trial. Running the same command again continues a search: finished trials are kept, and a
trial whose worker died is failed and retried, continuing its folder from its last checkpoint.
Lightning-free.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from lightyaml.config.loading import Config, config_differences, dump_yaml, load_config, parse_yaml
from lightyaml.config.secrets import (
    check_no_masked_secrets,
    drop_password,
    mask_command,
    mask_secrets,
    mask_text,
    mask_url,
)
from lightyaml.errors import PROJECT_ROOT, ConfigError, display_path
from lightyaml.launch.cli import Plan
from lightyaml.launch.console import say
from lightyaml.launch.devices import check_gpu_asked
from lightyaml.launch.search_space import (
    HEARTBEAT_SECONDS,
    SearchSpec,
    make_pruner,
    make_sampler,
    open_storage,
    read_search,
    retry,
)
from lightyaml.launch.sweep import run_value, worker_slots
from lightyaml.launch.trial import PRUNED_FILE, trial_environment
from lightyaml.run.experiment_dir import atomic_write, check_experiment_name
from lightyaml.run.trackers import GROUP_ENV


@dataclasses.dataclass
class Search:
    """One process's part in a search: the study, what each trial runs, and its workers' state."""
    study: Any
    storage: Any
    storage_url: str
    spec: SearchSpec
    folder: Path                     # save/<name>-search: trial folders, logs, summary
    command: list[str]               # a trial's command line, less its folder name and values
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    running: set = dataclasses.field(default_factory=set)   # the trial processes, to stop on a signal


@dataclasses.dataclass
class PlannedSearch:
    """A search checked but not started: the entry point validates `configs` (every range end and
    choice), then calls `start`."""
    plan: Plan
    base: str                 # the study's name; trials go to save/<base>-search/
    cfg: Config
    spec: SearchSpec
    configs: list[Config]

    def start(self) -> int:
        """Open (or continue) the study, run trials with `--workers` workers until it has n_trials,
        then write the summary and plots (with --summarize only these). Exit status 0 if a trial completed."""
        args, script = self.plan.args, self.plan.script
        slots = worker_slots(args.gpu, args.workers)
        folder = (Path(args.save_root) / f'{self.base}-search').resolve()
        url = args.storage or f'sqlite:///{folder}/study.db'
        if args.summarize and args.storage is None and not (folder / 'study.db').is_file():
            raise ConfigError(f'--summarize: no study in {display_path(folder)}; run the search first')
        if args.launcher == 'slurm' and not args.summarize:
            return _write_slurm_script(self.plan, folder, url, len(slots))
        if args.storage is None:
            folder.mkdir(parents=True, exist_ok=True)   # the study's SQLite file lives in it
        study, storage = open_study(self.spec, self.cfg, url, self.base, shared=args.storage is not None)
        folder.mkdir(parents=True, exist_ok=True)   # with --storage: once its database has answered
        if args.summarize:   # the trials as they are, none started
            from lightyaml.launch.search_report import write_report  # optuna and matplotlib: only for a summary
            print(write_report(study, folder, self.spec))
            return 0 if _completed(study) else 1
        command = [sys.executable, str(PROJECT_ROOT / script), '--config', args.config, '--save-root', str(folder),
                   '--auto-resume', *args.overrides]
        search = Search(study, storage, url, self.spec, folder, command)
        atomic_write(folder / 'search.yaml', dump_yaml({'command': ' '.join(mask_command(self.plan.command)),
                                                        'study': self.base, 'storage': mask_url(url),
                                                        **mask_secrets(self.spec.definition())}))
        fail_dead_trials(search)
        return _run_workers(search, slots)


def plan_search(plan: Plan) -> PlannedSearch:
    """The search `--search search.yaml` asks for, its file read and checked."""
    args = plan.args
    if not args.config:
        raise ConfigError('--search needs --config')
    if args.sweep or args.seeds or args.resume or args.auto_resume:
        raise ConfigError('--search: not with --sweep, --seeds, --resume or --auto-resume (a grid is sampler: grid)')
    base = args.name or Path(args.config).stem
    check_experiment_name(base)
    cfg = load_config(args.config, args.overrides)
    check_no_masked_secrets(cfg)   # a saved config.yaml as the search's base
    check_gpu_asked(cfg, args.gpu)
    spec = read_search(args.search, cfg)
    edges = [load_config(args.config, [*args.overrides, *overrides]) for overrides in spec.edge_overrides()]
    return PlannedSearch(plan, base, cfg, spec, edges)


def _write_slurm_script(plan: Plan, folder: Path, url: str, tasks: int) -> int:
    """--launcher slurm: an array of `tasks` workers of this search, sharing its storage, and the
    summary job."""
    from lightyaml.launch.slurm import LAUNCH_FLAGS, without_flags, write_array_script  # SLURM only
    args = plan.args
    # The script is a file: it names the storage without its password (the tasks' database client
    # takes it from its own setting, e.g. PGPASSWORD, which sbatch passes on from the environment).
    search = [str(PROJECT_ROOT / plan.script), *without_flags(plan.argv, {**LAUNCH_FLAGS, '--storage': 1}),
              '--storage', drop_password(url)]
    task = [*search, '--workers', '1', *(['--gpu', '0'] if args.gpu and args.gpu != 'cpu' else [])]
    if drop_password(url) != url:
        print(f'note: slurm.sh names --storage {drop_password(url)} without its password; give it to the tasks '
              f'through the database client\'s own setting (PostgreSQL: PGPASSWORD or ~/.pgpass)')
    if not args.storage and tasks > 1:
        print(f'note: the {tasks} tasks share {url}; SQLite is safe on one machine only: for tasks on '
              f'several nodes give --storage postgresql://...')
    return write_array_script(folder, [task] * tasks, [*search, '--summarize'], args)


def open_study(spec: SearchSpec, cfg: Config, url: str, name: str, shared: bool) -> tuple[Any, Any]:
    """Create the study, or load it if it exists and searches the same config and space (else a
    ConfigError: a search is never continued with other settings). With a shared database each
    process seeds its sampler differently, so that processes do not propose the same points."""
    import optuna  # optional: only for --search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)   # heartbeats: stable since 2.9
    warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used with Study.optimize')
    for attempt in range(3):   # workers starting together may race to create the tables
        try:
            storage = open_storage(url, heartbeat=True)
            break
        except Exception as e:
            if attempt == 2:
                raise _storage_error(url, shared, e) from None
            time.sleep(1 + attempt)
    definition = {'config': mask_secrets(dict(cfg)), **spec.definition()}   # kept in the study's database
    offset = int.from_bytes(os.urandom(2), 'big') if shared else 0
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(spec, offset),
                                pruner=make_pruner(spec.pruner), direction=spec.direction, load_if_exists=True)
    saved = study.user_attrs.get('definition')
    if saved is None:
        study.set_user_attr('definition', _plain(definition))
    else:
        differences = config_differences(saved, _plain(definition))
        if differences:
            raise ConfigError(f'--search: study {name!r} in {mask_url(url)} searches another config or space '
                              f'({"; ".join(differences[:3])}); choose another --name')
    return study, storage


def _storage_error(url: str, shared: bool, error: Exception) -> ConfigError:
    """A database that cannot be opened (refused, unreachable, no driver, bad password) as one
    line, its password masked."""
    cause = getattr(error, 'orig', None) or error   # SQLAlchemy wraps the driver's error
    detail = mask_text((str(cause).strip().splitlines() or [''])[0])[:300]
    flag = '--storage' if shared else '--search: the study database'
    return ConfigError(f'{flag} {mask_url(url)}: cannot open it ({type(cause).__name__}: {detail})')


def _plain(data: Any) -> Any:
    """JSON-ready (study attributes are stored as JSON): the config after a YAML round trip."""
    import yaml  # only for a study's attributes
    return yaml.safe_load(dump_yaml(data))


# ------------------------------------------------------------------------------------- the workers

def counted_trials(trials: Sequence[Any]) -> list[Any]:
    """The trials that count towards n_trials: those running or run to an end, less those retried
    (a dead worker's: the retry counts) and those never run (asked for once other workers had
    reached n_trials)."""
    retried = {n for t in trials for n in t.system_attrs.get('retry_history', [])}
    return [t for t in trials if t.state.name != 'WAITING' and t.number not in retried
            and not t.user_attrs.get('not_run')]


def fail_dead_trials(search: Search) -> None:
    """Fail and retry the RUNNING trials whose worker is gone: on this machine, a worker process
    that no longer exists; elsewhere, one whose heartbeat stopped (Optuna's fail_stale_trials)."""
    import optuna  # optional: only for --search
    from optuna.exceptions import UpdateFinishedTrialError  # optional: only for --search
    optuna.storages.fail_stale_trials(search.study)
    for trial in search.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get('pid')
        if (trial.user_attrs.get('host') != socket.gethostname() or not pid or _alive(pid)
                or _alive(trial.user_attrs.get('trial_pid'))):   # a trial outliving its worker still writes
            continue
        try:
            search.storage.set_trial_user_attr(trial._trial_id, 'note', f'its worker (pid {pid}) stopped; retried')
            if search.storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                retry(search.study, search.storage.get_trial(trial._trial_id))
        except UpdateFinishedTrialError:   # another worker got there first
            pass


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_workers(search: Search, slots: list[tuple[list[str], dict[str, str]]]) -> int:
    """One thread per slot asks for trials until the study has enough; SIGINT, SIGTERM or SIGUSR1
    (slurm.sh's, before a requeue) stops the trials running (they are failed and retried when the
    search is run again)."""
    from lightyaml.launch.search_report import write_report  # optuna and matplotlib: only at a search's end

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGUSR1)} if in_main_thread else {}
    pool = concurrent.futures.ThreadPoolExecutor(len(slots))
    status = 0
    try:
        for future in [pool.submit(_worker, search, slot) for slot in slots]:
            future.result()
    except KeyboardInterrupt:
        search.stop.set()
        for process in list(search.running):
            process.terminate()
        status = 130
    finally:
        pool.shutdown(wait=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(write_report(search.study, search.folder, search.spec))
    return 1 if status == 0 and not _completed(search.study) else status


def _completed(study: Any) -> bool:
    """Whether a trial of the study has completed."""
    import optuna  # optional: only for --search
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _worker(search: Search, slot: tuple[list[str], dict[str, str]]) -> None:
    """Ask the study for trials and run them, until n_trials count or the search is stopped."""
    import optuna  # optional: only for --search
    while not search.stop.is_set():
        fail_dead_trials(search)
        if len(counted_trials(search.study.get_trials(deepcopy=False))) >= search.spec.n_trials:
            return
        trial = search.study.ask()
        search.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr('host', socket.gethostname())
        trial.set_user_attr('pid', os.getpid())
        earlier = [t for t in counted_trials(search.study.get_trials(deepcopy=False)) if t.number < trial.number]
        if len(earlier) >= search.spec.n_trials:   # another worker asked at the same moment and came first
            trial.set_user_attr('not_run', True)
            trial.set_user_attr('note', f'not run: the study had {search.spec.n_trials} trials')
            search.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        _run_trial(search, trial, slot)


def _run_trial(search: Search, trial: Any, slot: tuple[list[str], dict[str, str]]) -> None:
    """Run one trial's process, beating the heartbeat while it runs, and tell the study how it
    ended: COMPLETE with its value, PRUNED, or FAIL (with the last line it printed)."""
    import optuna  # optional: only for --search
    state = optuna.trial.TrialState
    values = search.spec.suggest(trial)
    name = trial.user_attrs.get('folder') or f'trial-{trial.number:03d}'   # a retry continues its folder
    trial.set_user_attr('folder', name)
    log = search.folder / 'logs' / f'{name}.log'
    log.parent.mkdir(exist_ok=True)
    gpu_flag, env = slot
    say(f'search: trial {trial.number} ({name}): {" ".join(values)}')
    # The trial reports to its study; the study's name is the runs' group in trackers (W&B, MLflow).
    env = {**os.environ, **env, GROUP_ENV: search.study.study_name,
           **trial_environment(search.storage_url, search.study.study_name, trial._trial_id, trial.number,
                               search.spec.metric, search.spec.pruner)}
    with open(log, 'a') as out:
        process = subprocess.Popen([*search.command, '--name', name, *values, *gpu_flag], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
        search.running.add(process)
        trial.set_user_attr('trial_pid', process.pid)
        if search.stop.is_set():   # stopped while this trial was being set up
            process.terminate()
        while True:
            try:
                code = process.wait(timeout=HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                search.storage.record_heartbeat(trial._trial_id)
        search.running.discard(process)
    exp = search.folder / name
    if search.stop.is_set():   # interrupted: failed and retried (from its checkpoint) next time
        trial.set_user_attr('note', 'interrupted; retried when the search runs again')
        search.study.tell(trial, state=state.FAIL)
        retry(search.study, search.storage.get_trial(trial._trial_id))
        return
    value = run_value(exp, search.spec.metric) if code == 0 else None
    if (exp / PRUNED_FILE).is_file():
        pruned = parse_yaml((exp / PRUNED_FILE).read_text(), PRUNED_FILE)
        outcome, note = state.PRUNED, (f"pruned after epoch {pruned['epoch'] + 1}: {pruned['metric']} "
                                       f"{pruned['value']:.4f} ({pruned['pruner']['name']} pruner)")
        value = float(pruned['value'])   # its last report, the study's value of a pruned trial (not its best epoch)
    elif value is not None:
        outcome, note = state.COMPLETE, f'{search.spec.metric} {value:.4f}'
    else:
        lines = log.read_text().strip().splitlines() or ['']
        outcome, note = state.FAIL, f'failed (exit status {code}): {lines[-1][:200]}'
    trial.set_user_attr('note', note)
    search.study.tell(trial, value if outcome == state.COMPLETE else None, state=outcome)
    say(f'search: trial {trial.number} {outcome.name}: {note}')
    if exp.is_dir():
        atomic_write(exp / 'trial.yaml', dump_yaml({
            'study': search.study.study_name, 'storage': mask_url(search.storage_url),
            'trial': trial.number, 'state': outcome.name, 'value': value, 'note': note, 'overrides': values}))
