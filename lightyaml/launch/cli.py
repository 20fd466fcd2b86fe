"""The command line both entry points share: the flags, `--gpu`, what `--config`/`--resume`/
`--init-from`/`--name` resolve to, and `run_cli`, which turns a ConfigError into one line per
problem and exit status 2. Lightning-free."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from lightyaml.run.experiment_dir import ExperimentDir, check_experiment_name, check_output_file
from lightyaml.run.results import plot_metrics
from lightyaml.config.checking import blame, first_line
from lightyaml.launch.console import quiet_console
from lightyaml.config.loading import Config, config_differences, dump_with_origins, load_config, resolve_seed
from lightyaml.config.listing import list_registered
from lightyaml.errors import PROJECT_ROOT, ConfigError, ExportCheckError, NonFiniteLossError, NothingToDo, RunStoppedError, display_path
from lightyaml.process import global_rank_from_env


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
    parser.add_argument('--auto-resume', action='store_true',
                        help='continue <save-root>/<name> if it exists (same config only), else start it')
    parser.add_argument('--save-root', default=str(PROJECT_ROOT / 'save'), help='where experiment folders go')
    parser.add_argument('--test', metavar='EXP', help="evaluate an experiment's checkpoint (--ckpt) on its test split")
    parser.add_argument('--predict', metavar='EXP', help="predict with an experiment's checkpoint on --data")
    parser.add_argument('--export', metavar='EXP', help="export an experiment's model (--format), traced on a batch "
                                                        'of its data and checked against PyTorch')
    parser.add_argument('--format', default='onnx', choices=['onnx', 'torchscript', 'pt2'],
                        help='with --export: onnx (default; pip install -r requirements-optional.txt), '
                             'torchscript or pt2 (torch.export)')
    parser.add_argument('--ckpt', default='best', help="with --test/--predict/--export: best (default), last, or a "
                                                       ".ckpt path")
    parser.add_argument('--ema', action=argparse.BooleanOptionalAction,
                        help='with --test/--predict/--export: use the checkpoint\'s EMA weights (--no-ema: the trained '
                             'weights); default: the EMA weights when the run validated with them')
    parser.add_argument('--data', help="with --predict: a dataset spec in YAML ('{name: digits, args: {split: test}}') "
                                       'or a folder of images (default: the test split)')
    parser.add_argument('--out', help='where --predict, --export or --plot write (default: inside the experiment folder)')
    parser.add_argument('--plot', nargs='+', metavar='EXP', help="plot the curves of experiments' metrics.csv to a PNG")
    parser.add_argument('--sweep', action='append', default=[], metavar='key=v1,v2',
                        help='run one experiment per combination of values (repeat the flag for a grid)')
    parser.add_argument('--seeds', help='with a sweep: run every combination with each of these seeds, e.g. 0,1,2')
    parser.add_argument('--search', metavar='SEARCH.yaml', help='an Optuna search: parameters, sampler, pruner, n_trials')
    parser.add_argument('--storage', metavar='URL', help='with --search: a database shared by workers, e.g. '
                                                         'postgresql://user@host/db (default: sqlite in the search folder)')
    parser.add_argument('--workers', type=int, help='with --search/--sweep: runs at once on this machine '
                                                    '(default: one per --gpu device, else 1)')
    parser.add_argument('--launcher', choices=['local', 'slurm'], default='local',
                        help='with --search/--sweep: slurm writes an sbatch array script instead of running')
    parser.add_argument('--submit', action='store_true', help='with --launcher slurm: also run sbatch on the script')
    parser.add_argument('--sbatch', action='append', default=[], metavar='OPTION=VALUE',
                        help='with --launcher slurm: an #SBATCH line, e.g. --sbatch time=4:00:00 --sbatch partition=gpu')
    parser.add_argument('--list', nargs='*', metavar='KIND', help='list registered names (all kinds, or the given ones)')
    parser.add_argument('--print-config', action='store_true',
                        help='print the merged config with references resolved, each key with the file or override '
                             'that set it, and exit (creates nothing)')
    parser.add_argument('--dry-run', action='store_true', help='build everything, run one training and one '
                        'validation batch, print the shapes of the batch, prediction and loss terms; create nothing')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of configuration errors')
    parser.add_argument('--verbose', action='store_true',
                        help="show third-party tips and libraries' deprecation warnings (hidden by default)")
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
    restart: bool = False       # the folder exists but has no checkpoint: start it again in place
    finished: bool = False      # --auto-resume of a finished run (result.yaml): nothing to do


def resolve_run(args: argparse.Namespace) -> Run:
    """From --config/--resume/--init-from/--name/--tag/--auto-resume: the merged config, the
    experiment folder and the checkpoints involved. A new run's folder must be free; checkpoints
    must be readable; a folder killed before its first checkpoint is started again in place.
    A resumed or overwritten folder is locked (global rank 0) before anything is read from it, so
    that no other run writes it meanwhile; the caller releases it (`exp.release()`) at the end."""
    from lightyaml.run.checkpoint_files import find_checkpoint   # torch: not needed by --print-config
    ckpt = init = None
    if args.resume and args.init_from:
        raise ConfigError('--resume and --init-from: choose one (resume continues a run; --init-from starts a new '
                          'one from its weights)')
    if args.init_from:
        init = find_checkpoint(args.init_from, '--init-from')
    if args.auto_resume:
        return _auto_resume(args, init)
    rank_zero = global_rank_from_env() == 0
    restart = False
    if args.resume:
        exp = resume_target(args)
        if rank_zero:
            exp.lock('--resume')
        config_path = Path(args.config) if args.config else exp.path / 'config.yaml'
        restart = Path(args.resume).is_dir() and not (exp.ckpt_dir / 'last.ckpt').exists()
    else:
        if not args.config:
            raise ConfigError('--config is required (or --resume an experiment folder); e.g. --config configs/digits.yaml')
        exp = _named_folder(args)
        if rank_zero and not args.dry_run:   # a dry run creates nothing, so any name will do
            exp.check_free(args.overwrite)
            if args.overwrite and exp.path.is_dir():
                exp.lock('--overwrite')
        config_path = Path(args.config)
    try:
        cfg = load_config(config_path, args.overrides)
        resolve_seed(cfg)
        ckpt = find_checkpoint(args.resume, '--resume') if args.resume and not restart else None
        if ckpt is not None:
            check_not_done(cfg, ckpt, exp)
    except BaseException:
        exp.release()
        raise
    return Run(cfg, exp, ckpt, init, restart=restart)


def _named_folder(args: argparse.Namespace) -> ExperimentDir:
    name = args.name or Path(args.config).stem
    if args.tag:
        check_experiment_name(args.tag, '--tag')
        name = f'{name}_{args.tag}'
    return ExperimentDir.for_name(args.save_root, name)


def _auto_resume(args: argparse.Namespace, init: Optional[Path]) -> Run:
    """--auto-resume: continue the named folder (its checkpoint, or from the start in place when it
    has none) if its config.yaml is the config asked for, start it if it does not exist."""
    if not args.config or args.resume or args.overwrite:
        raise ConfigError('--auto-resume: give --config (and --name), without --resume or --overwrite')
    exp = _named_folder(args)
    cfg = load_config(args.config, args.overrides)
    saved_path = exp.path / 'config.yaml'
    # A DDP process other than rank 0 may find the folder rank 0 is creating: a new run as well.
    if not exp.path.exists() or (global_rank_from_env() > 0 and not saved_path.is_file()):
        resolve_seed(cfg)
        return Run(cfg, exp, None, init)
    if not saved_path.is_file():
        raise ConfigError(f'--auto-resume: {display_path(exp.path)} has no config.yaml; is it an experiment folder? '
                          f'(--overwrite moves it aside)')
    if global_rank_from_env() == 0:
        exp.lock('--auto-resume')
    try:
        saved = load_config(saved_path)   # as the run read it: references and escapes resolved
        differences = config_differences(saved, cfg, ignore_seed=True)
        if differences:
            raise ConfigError(f'--auto-resume: {display_path(exp.path)} was run with another config '
                              f'({"; ".join(differences[:3])}); choose another --name, or --resume it with overrides')
        cfg['seed'] = saved.get('seed')   # the seed drawn when it started
        resolve_seed(cfg)
        if (exp.path / 'result.yaml').is_file():
            exp.release()
            return Run(cfg, exp, None, init, finished=True)
        if (exp.ckpt_dir / 'last.ckpt').is_file():
            from lightyaml.run.checkpoint_files import find_checkpoint
            return Run(cfg, exp, find_checkpoint(str(exp.path), '--auto-resume'), init)
        return Run(cfg, exp, None, init, restart=True)
    except BaseException:
        exp.release()
        raise


def resume_target(args: argparse.Namespace) -> ExperimentDir:
    """The experiment folder `--resume` continues: the folder given, or the one whose ckpt/ holds
    the .ckpt given. A checkpoint elsewhere would make some unrelated folder the experiment."""
    target = Path(args.resume)
    if target.is_dir():
        if args.config:
            raise ConfigError(f'--config with --resume {args.resume}: a resumed run uses its own '
                              f'config.yaml (give changes as overrides)')
        if not (target / 'config.yaml').is_file():
            raise ConfigError(f'--resume {args.resume}: no config.yaml in this folder; is it an experiment folder?')
        return ExperimentDir(target)
    if not target.is_file():
        raise ConfigError(f'--resume {args.resume}: no such experiment folder or checkpoint file')
    from lightyaml.run.checkpoint_files import read_checkpoint
    read_checkpoint(target, f'--resume {args.resume}')
    exp = ExperimentDir(target.resolve().parent.parent)
    if target.resolve().parent != exp.ckpt_dir or not (exp.path / 'config.yaml').is_file():
        raise ConfigError(f'--resume {args.resume}: this checkpoint is not in the ckpt/ folder of an experiment '
                          f'(with its config.yaml); to start a new run from its weights use --init-from {args.resume}')
    return exp


def check_not_done(cfg: Config, ckpt: Path, exp: ExperimentDir) -> None:
    """Refuse to resume a run that has nothing left to do (NothingToDo: exit 0, nothing changed)."""
    from lightyaml.run.checkpoint_files import training_done
    params = cfg.get('trainer_params') or {}
    max_epochs, max_steps = params.get('max_epochs'), params.get('max_steps', -1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (max_steps, max_epochs or 0)):
        return   # validation reports it
    if max_epochs is None:   # Lightning's default
        max_epochs = 1000 if max_steps == -1 else -1
    epochs, steps = training_done(ckpt)
    if 0 <= max_epochs <= epochs:
        raise NothingToDo(f'nothing to do: {display_path(exp.path)} has trained {epochs} epochs and '
                          f'trainer_params.max_epochs is {max_epochs}; raise it to train on '
                          f'(e.g. trainer_params.max_epochs={epochs + 10}). Nothing was changed.')
    if 0 <= max_steps <= steps:
        raise NothingToDo(f'nothing to do: {display_path(exp.path)} has trained {steps} steps and '
                          f'trainer_params.max_steps is {max_steps}; raise it to train on. Nothing was changed.')


def run_evaluation(args: argparse.Namespace, validate: Callable[[Config], None],
                   evaluate_checkpoint: Callable[[argparse.Namespace, ExperimentDir, Config, Path], None]) -> None:
    """--test, --predict or --export: the experiment (held while it is read), its config and the
    checkpoint (`resolve_evaluation`), then the entry point's `evaluate_checkpoint`."""
    exp, cfg, ckpt = resolve_evaluation(args, validate)
    try:
        evaluate_checkpoint(args, exp, cfg, ckpt)
    finally:
        exp.release()


def run_cli(run: Callable[[argparse.Namespace, list[str]], Any], script: str, doc: str,
            argv: Optional[Sequence[str]] = None, validate: Optional[Callable[[Config], None]] = None) -> int:
    """Parse the command line and call `run(args, command)` (or run a sweep or search of `script`,
    whose configs `validate` checks first); a ConfigError prints one line per problem and exits
    with status 2 (a traceback only with --debug)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser(doc).parse_intermixed_args(argv)
    quiet_console(args.verbose)
    try:
        if args.list is not None:
            print(list_registered(args.list))
            return 0
        if args.print_config:
            print(dump_with_origins(load_config(config_to_print(args), args.overrides)))
            return 0
        if args.plot:
            out = check_output_file(args.out, '--plot', Path(args.plot[0]) / 'curves.png') if args.out else None
            print(f'wrote {display_path(plot_metrics([Path(p) for p in args.plot], out))}')
            return 0
        if args.search:
            from lightyaml.launch.search import run_search
            return run_search(script, args, argv, validate)
        if args.sweep or args.seeds:
            from lightyaml.launch.sweep import run_sweep
            return run_sweep(script, args, argv, validate)
        for flag, given in (('--storage', args.storage), ('--workers', args.workers), ('--submit', args.submit),
                            ('--launcher', args.launcher != 'local'), ('--sbatch', args.sbatch)):
            if given:
                raise ConfigError(f'{flag}: only with --search or --sweep')
        run(args, ['python', script, *argv])
        return 0
    except NothingToDo as e:
        print(e)
        return 0
    except ConfigError as e:
        if args.debug:
            raise
        for problem in e.problems:
            print(f'error: {problem}', file=sys.stderr)
        return 2
    except (NonFiniteLossError, ExportCheckError, RunStoppedError) as e:
        if args.debug:
            raise
        print(f'error: {e}', file=sys.stderr)
        return 1


def config_to_print(args: argparse.Namespace) -> Path:
    """For --print-config: --config, or the config.yaml of the experiment a flag names."""
    if args.config:
        return Path(args.config)
    for flag in ('resume', 'test', 'predict', 'export'):
        target = getattr(args, flag, None)
        if target:
            folder = Path(target) if Path(target).is_dir() else Path(target).resolve().parent.parent
            if not (folder / 'config.yaml').is_file():
                raise ConfigError(f"--{flag} {target}: no config.yaml there; is it an experiment folder?")
            return folder / 'config.yaml'
    raise ConfigError('--print-config: which config? give --config (or --resume/--test/--predict/--export EXP)')


@contextlib.contextmanager
def stopped_run(exp: ExperimentDir, cfg: Config) -> Iterator[None]:
    """An error that stops a run under way (a full disk, a dataset that raises) becomes one line,
    a RunStoppedError: the cause, the config key it comes from, the checkpoint kept, how to go on."""
    try:
        yield
    except (ConfigError, NonFiniteLossError, RunStoppedError):
        raise
    except Exception as e:
        raise RunStoppedError(stop_message(e, exp, cfg)) from e


def stop_message(error: Exception, exp: ExperimentDir, cfg: Config) -> str:
    """`run stopped: <cause>; the last good checkpoint ... is kept; continue with --resume ...`."""
    if isinstance(error, OSError) and error.errno is not None:
        where = f': {display_path(Path(os.fsdecode(error.filename)))}' if error.filename else ''
        cause = f'{error.strerror or error}{where} ({errno.errorcode.get(error.errno, error.errno)})'
    else:
        key = blame(error, cfg, '')
        cause = f"{f'{key}: ' if key else ''}{type(error).__name__}: {first_line(error)}"
    from lightyaml.run.checkpoint_files import read_checkpoint   # torch: only once a run stopped
    last = exp.ckpt_dir / 'last.ckpt'
    if last.is_file():
        epoch = read_checkpoint(last, str(last)).get('epoch', -1) + 1
        kept = (f'the last good checkpoint {display_path(last)} (epoch {epoch}) is kept; continue with '
                f'--resume {display_path(exp.path)} (--debug shows the traceback)')
    else:
        kept = 'no checkpoint was written' if exp.path.exists() else 'nothing was created'
    return f'run stopped: {cause}; {kept}'


# ---------------------------------------------------------------- results, test and predict outputs

def resolve_evaluation(args: argparse.Namespace, validate: Callable[[Config], None]) -> tuple[ExperimentDir, Config, Path]:
    """For --test/--predict/--export: the experiment, its config (with overrides, validated) and the checkpoint."""
    from lightyaml.run.checkpoint_files import experiment_checkpoint
    flag, target = next((f'--{flag}', getattr(args, flag)) for flag in ('test', 'predict', 'export') if getattr(args, flag))
    exp = ExperimentDir(target)
    if not (exp.path / 'config.yaml').is_file():
        raise ConfigError(f'{flag} {target}: no config.yaml there; is it an experiment folder?')
    if args.predict and args.out:
        check_output_file(args.out, '--predict', exp.path / 'predictions.csv')
    if args.export and args.out:   # the export makes its folder; its own files are under export/
        check_output_file(args.out, '--export', exp.path / 'export', parent_must_exist=False)
    cfg = load_config(exp.path / 'config.yaml', args.overrides)
    validate(cfg)
    ckpt = experiment_checkpoint(exp, args.ckpt)
    if args.test or not args.out:   # it writes into the folder: test.yaml and log.txt, or predictions.csv
        exp.lock(flag)
    return exp, cfg, ckpt
