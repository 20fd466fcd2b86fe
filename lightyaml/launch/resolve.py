"""What a command line resolves to before anything is created: for a training run the merged
config, the experiment folder and the checkpoints (`resolve_run`); for --test/--predict/--export
the experiment, its config and checkpoint (`resolve_evaluation`). Lightning-free; torch only
once a checkpoint is read."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from lightyaml.config.loading import Config, config_differences, load_config, resolve_seed
from lightyaml.config.secrets import check_no_masked_secrets, mask_secrets
from lightyaml.errors import ConfigError, NothingToDo, display_path
from lightyaml.launch.cli import Plan
from lightyaml.launch.devices import check_gpu_asked
from lightyaml.launch.trial import ValidationHook, validation_hook
from lightyaml.process import global_rank_from_env
from lightyaml.run.experiment_dir import ExperimentDir, check_experiment_name, check_output_file, checkpoint_on_disk

LAUNCH_FLAGS = ('storage', 'workers', 'submit', 'launcher', 'sbatch')   # only with --search or --sweep


@dataclasses.dataclass
class Run:
    """One training run, resolved and checked: what `train` in either entry point takes."""
    cfg: Config
    exp: ExperimentDir
    resume: Optional[Path] = None      # the checkpoint to continue from (counters, optimizer, RNG)
    init_from: Optional[Path] = None   # a checkpoint to take only the weights from
    restart: bool = False              # the folder exists but has no checkpoint: start it again in place
    command: tuple[str, ...] = ()      # the command line, recorded in the folder
    overwrite: bool = False            # --overwrite: an old folder of the name was moved aside
    gpu: Optional[str] = None          # --gpu
    nodes: Optional[int] = None        # --nodes
    dry_run: bool = False              # --dry-run: stop after the preflight
    on_validation: Optional[ValidationHook] = None   # a search trial's pruner: True stops the run


def check_single_run_flags(args: argparse.Namespace) -> None:
    """--storage, --workers, --launcher, --submit and --sbatch belong to sweeps and searches."""
    for flag in LAUNCH_FLAGS:
        if getattr(args, flag) and getattr(args, flag) != 'local':
            raise ConfigError(f"--{flag}: only with --search or --sweep")


def resolve_run(plan: Plan) -> Run:
    """From --config/--resume/--init-from/--name/--tag/--auto-resume: the merged config, the
    experiment folder and the checkpoints involved. A new run's folder must be free; checkpoints
    must be readable; a folder killed before its first checkpoint is started again in place.
    A resumed or overwritten folder is locked (global rank 0) before anything is read from it, so
    that no other run writes it meanwhile; `train` releases it at the end."""
    args = plan.args
    check_single_run_flags(args)
    run = _resolve(args)
    try:
        check_gpu_asked(run.cfg, args.gpu)
    except ConfigError:
        run.exp.release()
        raise
    return dataclasses.replace(run, command=plan.command, overwrite=args.overwrite, gpu=args.gpu, nodes=args.nodes,
                               dry_run=args.dry_run, on_validation=validation_hook(run.exp))


def _resolve(args: argparse.Namespace) -> Run:
    """From --config/--resume/--init-from/--name/--tag/--auto-resume: the merged config, the
    experiment folder and the checkpoints involved. A new run's folder must be free; checkpoints
    must be readable; a folder killed before its first checkpoint is started again in place.
    A resumed or overwritten folder is locked (global rank 0) before anything is read from it, so
    that no other run writes it meanwhile; the caller releases it (`exp.release()`) at the end."""
    from lightyaml.run.checkpoint_files import find_checkpoint  # torch: not needed by --print-config
    ckpt = init = None
    if args.resume and args.init_from:
        raise ConfigError('--resume and --init-from: choose one (resume continues a run; --init-from starts a new '
                          'one from its weights)')
    if args.init_from:
        init = find_checkpoint(args.init_from, '--init-from')
    if args.auto_resume or requeued_by_slurm(args):
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
            raise ConfigError('--config is required (or --resume an experiment folder); '
                              'e.g. --config configs/digits.yaml')
        exp = _named_folder(args)
        if rank_zero and not args.dry_run:   # a dry run creates nothing, so any name will do
            exp.check_free(args.overwrite)
            if args.overwrite and exp.path.is_dir():
                exp.lock('--overwrite')
        config_path = Path(args.config)
    try:
        cfg = load_config(config_path, args.overrides)
        check_no_masked_secrets(cfg)
        resolve_seed(cfg)
        ckpt = find_checkpoint(args.resume, '--resume') if args.resume and not restart else None
        if ckpt is not None:
            check_not_done(cfg, ckpt, exp)
    except BaseException:
        exp.release()
        raise
    return Run(cfg, exp, ckpt, init, restart=restart)


def requeued_by_slurm(args: argparse.Namespace) -> bool:
    """A SLURM job run again after a requeue (Lightning's on SIGUSR1, `scontrol requeue`, a
    preemption) runs its command again: a --config run continues its folder, as --auto-resume does."""
    return int(os.environ.get('SLURM_RESTART_COUNT') or 0) > 0 and bool(args.config) and not args.resume


def _named_folder(args: argparse.Namespace) -> ExperimentDir:
    name = args.name or Path(args.config).stem
    if args.tag:
        check_experiment_name(args.tag, '--tag')
        name = f'{name}_{args.tag}'
    return ExperimentDir.for_name(args.save_root, name)


def _auto_resume(args: argparse.Namespace, init: Optional[Path]) -> Run:
    """--auto-resume (or a SLURM requeue): continue the named folder (its checkpoint, or from the start in place when it
    has none) if its config.yaml is the config asked for, start it if it does not exist."""
    if not args.config or args.resume or (args.overwrite and args.auto_resume):   # a requeue: its own folder
        raise ConfigError('--auto-resume: give --config (and --name), without --resume or --overwrite')
    exp = _named_folder(args)
    cfg = load_config(args.config, args.overrides)
    check_no_masked_secrets(cfg)
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
        differences = config_differences(saved, mask_secrets(cfg), ignore_decided=True)   # saved: secrets `***`
        if differences:
            raise ConfigError(f'--auto-resume: {display_path(exp.path)} was run with another config '
                              f'({"; ".join(differences[:3])}); choose another --name, or --resume it with overrides')
        cfg['seed'], cfg['threads'] = saved.get('seed'), saved.get('threads')   # as decided when it started
        resolve_seed(cfg)
        if (exp.path / 'result.yaml').is_file():
            exp.release()
            raise NothingToDo(f'{display_path(exp.path)} has finished (result.yaml); nothing to do')
        if checkpoint_on_disk(exp.ckpt_dir / 'last.ckpt') is not None:
            from lightyaml.run.checkpoint_files import find_checkpoint  # torch: not needed by --print-config
            return Run(cfg, exp, find_checkpoint(str(exp.path), '--auto-resume'), init)
        return Run(cfg, exp, None, init, restart=True)
    except BaseException:
        exp.release()
        raise


def resume_target(args: argparse.Namespace) -> ExperimentDir:
    """The experiment folder `--resume` continues: the folder given, or the one whose ckpt/ holds
    the .ckpt given. A checkpoint elsewhere would make some unrelated folder the experiment."""
    target = Path(args.resume)
    if target.is_dir() and checkpoint_on_disk(target) != target:   # an experiment folder, not a checkpoint folder
        if args.config:
            raise ConfigError(f'--config with --resume {args.resume}: a resumed run uses its own '
                              f'config.yaml (give changes as overrides)')
        if not (target / 'config.yaml').is_file():
            raise ConfigError(f'--resume {args.resume}: no config.yaml in this folder; is it an experiment folder?')
        return ExperimentDir(target)
    if checkpoint_on_disk(target) != target:
        raise ConfigError(f'--resume {args.resume}: no such experiment folder or checkpoint file')
    from lightyaml.run.checkpoint_files import read_checkpoint  # torch: not needed by --print-config
    read_checkpoint(target, f'--resume {args.resume}')
    exp = ExperimentDir(target.resolve().parent.parent)
    if target.resolve().parent != exp.ckpt_dir or not (exp.path / 'config.yaml').is_file():
        raise ConfigError(f'--resume {args.resume}: this checkpoint is not in the ckpt/ folder of an experiment '
                          f'(with its config.yaml); to start a new run from its weights use --init-from {args.resume}')
    return exp


def check_not_done(cfg: Config, ckpt: Path, exp: ExperimentDir) -> None:
    """Refuse to resume a run that has nothing left to do (NothingToDo: exit 0, nothing changed)."""
    from lightyaml.run.checkpoint_files import training_done  # torch: not needed by --print-config
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


@dataclasses.dataclass
class Evaluation:
    """--test, --predict or --export of one experiment: its folder, config and checkpoint."""
    args: argparse.Namespace
    flag: str
    exp: ExperimentDir
    cfg: Config
    ckpt: Path

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The folder locked while test.yaml and log.txt, or predictions.csv, are written into it."""
        writes = self.args.test or not self.args.out
        if writes:
            self.exp.lock(self.flag)
        try:
            yield
        finally:
            if writes:
                self.exp.release()


def resolve_evaluation(plan: Plan) -> Evaluation:
    """For --test/--predict/--export: the experiment, its config (with overrides) and the
    checkpoint; the caller validates the config, then evaluates under `held()`."""
    from lightyaml.run.checkpoint_files import experiment_checkpoint, read_checkpoint  # torch: not for --print-config
    args = plan.args
    check_single_run_flags(args)
    flag = next(f'--{flag}' for flag in ('test', 'predict', 'export') if getattr(args, flag))
    target = getattr(args, flag[2:])
    exp = ExperimentDir(target)
    if not (exp.path / 'config.yaml').is_file():
        raise ConfigError(f'{flag} {target}: no config.yaml there; is it an experiment folder?')
    if args.predict and args.out:
        check_output_file(args.out, '--predict', exp.path / 'predictions.csv')
    if args.export and args.out:   # the export makes its folder; its own files are under export/
        check_output_file(args.out, '--export', exp.path / 'export', parent_must_exist=False)
    cfg = load_config(exp.path / 'config.yaml', args.overrides)
    ckpt = experiment_checkpoint(exp, args.ckpt)
    read_checkpoint(ckpt, f'{flag} {target}')   # corrupt, refused by weights_only or foreign: one line, now
    return Evaluation(args, flag, exp, cfg, ckpt)
