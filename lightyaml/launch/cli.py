"""The command line both entry points share: its flags, and the `Plan` it parses into, which the
entry point carries out; `exit_status` turns the errors a user can cause into one line each
and an exit status. Lightning-free and torch-free: `--list` and `--print-config` answer at once."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NoReturn, Optional

from lightyaml.config.listing import list_registered
from lightyaml.config.loading import dump_with_origins, load_config
from lightyaml.config.secrets import mask_text
from lightyaml.errors import (
    PROJECT_ROOT,
    ConfigError,
    ExportCheckError,
    NonFiniteLossError,
    NothingToDo,
    RunStoppedError,
    display_path,
)
from lightyaml.launch.console import quiet_console
from lightyaml.process import global_rank_from_env
from lightyaml.run.stopping import StoppedBySignal

Action = Literal['answer', 'runs', 'sweep', 'search', 'evaluate', 'tune', 'train']
# Set to N, every run a command trains (a run, each run of a sweep or search) stops after N epochs: the
# override trainer_params.max_epochs=N comes after the command's own. For trying commands quickly
# (tests/test_docs_commands.py runs the docs' commands so); docs/command-line.md.
MAX_EPOCHS_ENV = 'LIGHTYAML_MAX_EPOCHS'


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the command line asks for: the action, the parsed flags, and the command as typed."""
    action: Action              # answer: --list, --print-config or --plot; runs: --runs, --diff, --compare
    args: argparse.Namespace
    argv: tuple[str, ...]       # the arguments as given (a sweep's or search's runs repeat them)
    command: tuple[str, ...]    # `python <script> <argv>`, recorded in the experiment folder
    script: str                 # train_pl.py or train.py: what a sweep's or search's runs start


def parse_command_line(script: str, doc: str, argv: Optional[Sequence[str]] = None) -> Plan:
    """The plan of `python <script> <argv>` (argv: sys.argv[1:] by default). Also quiets the
    console's third-party noise unless --verbose."""
    argv = tuple(sys.argv[1:] if argv is None else argv)
    args = make_parser(doc).parse_intermixed_args(argv)
    quiet_console(args.verbose)
    if args.list is not None or args.print_config or args.plot:
        action = 'answer'
    elif args.runs is not None or args.diff or args.compare:   # lightyaml/launch/runs.py: read from folders alone
        action = 'runs'
    elif args.search:
        action = 'search'
    elif args.sweep or args.seeds:
        action = 'sweep'
    elif args.test or args.predict or args.export:
        action = 'evaluate'
    elif args.find_lr or args.find_batch_size:
        action = 'tune'
    else:
        action = 'train'
    shortened = os.environ.get(MAX_EPOCHS_ENV)
    if shortened is not None and action in ('train', 'sweep', 'search'):
        if not shortened.isdigit() or int(shortened) < 1:
            make_parser(doc).error(f'{MAX_EPOCHS_ENV}={shortened}: expected a whole number of epochs from 1')
        args.overrides = [*args.overrides, f'trainer_params.max_epochs={int(shortened)}']
        if global_rank_from_env() == 0:
            print(f'note: {MAX_EPOCHS_ENV}={shortened}: training stops after {int(shortened)} '
                  f"epoch{'s' if int(shortened) > 1 else ''} (trainer_params.max_epochs={int(shortened)})", flush=True)
    return Plan(action, args, argv, ('python', script, *argv), script)


@dataclasses.dataclass
class ExitStatus:
    code: int = 0


@contextlib.contextmanager
def exit_status(plan: Plan) -> Iterator[ExitStatus]:
    """Run the block; a ConfigError prints one line per problem and sets status 2, a run that
    stopped on an error one line and status 1, NothingToDo its message and status 0. --debug
    lets the traceback through instead."""
    status = ExitStatus()
    try:
        yield status
    except NothingToDo as e:
        print(e)
    except StoppedBySignal as e:   # its line is written (lightyaml/run/stopping.py)
        status.code = e.code
    except KeyboardInterrupt:   # Ctrl-C before training started: nothing to keep, no traceback
        status.code = 128 + signal.SIGINT
    except ConfigError as e:
        if plan.args.debug:
            raise
        for problem in e.problems:   # a problem may quote an override or a URL that holds a secret
            print(f'error: {mask_text(problem)}', file=sys.stderr)
        status.code = 2
    except (NonFiniteLossError, ExportCheckError, RunStoppedError) as e:
        if plan.args.debug:
            raise
        print(f'error: {mask_text(str(e))}', file=sys.stderr)
        status.code = 1


def answer(plan: Plan) -> str:
    """What --list, --print-config or --plot print; read from files, nothing trained or created
    (--plot writes only its picture)."""
    args = plan.args
    if args.list is not None:
        return list_registered(args.list)
    if args.print_config:
        return dump_with_origins(load_config(config_to_print(args), args.overrides))
    from lightyaml.run.experiment_dir import check_output_file  # only for --plot --out
    from lightyaml.run.results import plot_metrics  # Pillow: only for --plot
    out = check_output_file(args.out, '--plot', Path(args.plot[0]) / 'curves.png') if args.out else None
    if args.out and Path(args.out).suffix.lower() != '.png':   # the plotter draws PNG bytes whatever the name
        raise ConfigError(f"--plot --out {args.out}: the plotter writes png only, not "
                          f"{Path(args.out).suffix or 'a file without a suffix'} (e.g. --out "
                          f"{Path(args.out).with_suffix('.png')})")
    return f'wrote {display_path(plot_metrics([Path(p) for p in args.plot], out))}'


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line with exit status 2, as every other error is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'error: {message} (see --help)\n')


def make_parser(doc: str, parser_class: type[argparse.ArgumentParser] = OneLineParser) -> argparse.ArgumentParser:
    """The command line both entry points share (`parser_class`: how a usage error is told)."""
    parser = parser_class(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', help='YAML config file')
    parser.add_argument('--name', help='experiment name: the run goes to <save-root>/<name> '
                                       '(default: config file stem)')
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
    parser.add_argument('--out', help='where --predict, --export, --plot, --compare or --find-lr write '
                                      '(default: inside the experiment folder; --compare: <save-root>/compare.png)')
    _add_launch_flags(parser)
    _add_reading_flags(parser)
    return parser


def _add_reading_flags(parser: argparse.ArgumentParser) -> None:
    """--runs, --diff, --compare (lightyaml/launch/runs.py): experiments read back from their folders."""
    parser.add_argument('--runs', nargs='?', const='', metavar='PATTERN',
                        help='a table of the experiments under --save-root, newest first (PATTERN: a name pattern '
                             "such as 'lr*', or a folder: a sweep's, a search's, another save root)")
    parser.add_argument('--sort', metavar='KEY', help='with --runs: sort by name, state, epochs, time, started '
                                                      '(default, newest first) or a metric, best first (val/acc)')
    parser.add_argument('--reverse', action='store_true', help='with --runs: the other way round')
    parser.add_argument('--state', metavar='STATE,...', help='with --runs: only runs in these states (running, '
                                                             'finished, pruned, stopped, failed, killed, ...)')
    parser.add_argument('--diff', nargs=2, metavar=('A', 'B'), help='the config keys that differ between two '
                        'experiments (or an experiment and a YAML file), where each value came from, then their '
                        'metrics; exit status 0 when equal, 1 when different')
    parser.add_argument('--compare', nargs='+', metavar='EXP', help="several experiments' curves in one picture "
                        '(--out, default <save-root>/compare.png) and their final and best values in a CSV beside it')


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """--plot, sweeps, searches, SLURM, and the flags of every command."""
    parser.add_argument('--plot', nargs='+', metavar='EXP', help="plot the curves of experiments' metrics.csv to a PNG")
    parser.add_argument('--sweep', action='append', default=[], metavar='key=v1,v2',
                        help='run one experiment per combination of values (repeat the flag for a grid)')
    parser.add_argument('--seeds', help='with a sweep: run every combination with each of these seeds, e.g. 0,1,2')
    parser.add_argument('--search', metavar='SEARCH.yaml',
                        help='an Optuna search: parameters, sampler, pruner, n_trials')
    parser.add_argument('--storage', metavar='URL',
                        help='with --search: a database shared by workers, e.g. postgresql://user@host/db '
                             '(default: sqlite in the search folder)')
    parser.add_argument('--workers', type=int, help='with --search/--sweep: runs at once on this machine '
                                                    '(default: one per --gpu device, else 1)')
    parser.add_argument('--launcher', choices=['local', 'slurm'], default='local',
                        help='with --search/--sweep: slurm writes an sbatch array script instead of running')
    parser.add_argument('--submit', action='store_true', help='with --launcher slurm: also run sbatch on the script')
    parser.add_argument('--sbatch', action='append', default=[], metavar='OPTION=VALUE',
                        help='with --launcher slurm: an #SBATCH line, '
                             'e.g. --sbatch time=4:00:00 --sbatch partition=gpu')
    parser.add_argument('--summarize', action='store_true',
                        help='with --search/--sweep: write the summary of the runs so far and run nothing '
                             "(what --launcher slurm's summary job does once the tasks have ended)")
    parser.add_argument('--list', nargs='*', metavar='KIND',
                        help='list registered names (all kinds, or the given ones)')
    parser.add_argument('--print-config', action='store_true',
                        help='print the merged config with references resolved, each key with the file or override '
                             'that set it, and exit (creates nothing)')
    parser.add_argument('--find-lr', action='store_true', help="Lightning's learning-rate finder on --config: the "
                        'suggested rate and the key to set it with, the curve to --out (default lr_find.png); '
                        'creates no experiment folder (train_pl.py)')
    parser.add_argument('--find-batch-size', action='store_true', help="Lightning's batch-size scaling on --config: "
                        'the largest batch per process that fits, and the key to set it with; creates no '
                        'experiment folder (train_pl.py)')
    parser.add_argument('--dry-run', action='store_true', help='build everything, run one training and one '
                        'validation batch, print the shapes of the batch, prediction and loss terms; create nothing')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of configuration errors')
    parser.add_argument('--verbose', action='store_true',
                        help="show third-party tips and libraries' deprecation warnings (hidden by default)")
    parser.add_argument('overrides', nargs='*', metavar='key.path=value',
                        help='dotted config overrides, values parsed as YAML')


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
