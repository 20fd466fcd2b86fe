"""`--launcher slurm`: an sbatch array script whose tasks are a search's workers or a sweep's grid
points, each continuing where it stopped when SLURM requeues it (preemption, time limit), and the
job that writes the summary once every task has ended.

SLURM sends USR1 90 s before it stops a task; the script's trap passes it to the run, which stops
at its next batch (its last epoch's last.ckpt stays), and requeues the task, which runs the same
command again: a grid point with --auto-resume, continuing bit-identical to an uninterrupted run;
a search worker that fails and retries its interrupted trial from its folder. The first task
submits summary.sh with `--dependency=afterany` on the array: it runs the sweep's or search's
command with --summarize (summary.md, summary.csv) when the last task ends, however they ended.
The scripts are plain bash: without SLURM, `SLURM_ARRAY_TASK_ID=1 bash slurm.sh` runs task 1 here
and `bash summary.sh` writes the summary. Lightning-free.
"""
from __future__ import annotations

import argparse
import datetime
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightyaml.errors import PROJECT_ROOT, ConfigError, display_path
from lightyaml.run.stopping import REQUEUED_BY
from lightyaml.run.trackers import GROUP_ENV

# The launching command's flags that its tasks and summary job set themselves or need not: left
# out where they repeat it (each with the number of values it takes).
LAUNCH_FLAGS = {'--launcher': 1, '--submit': 0, '--sbatch': 1, '--workers': 1, '--gpu': 1}


def without_flags(argv: Sequence[str], flags: Mapping[str, int]) -> list[str]:
    """`argv` less `flags` (each with the number of values it takes; `--flag=value` is one)."""
    kept, i = [], 0
    while i < len(argv):
        flag = argv[i].split('=', 1)[0]
        if flag in flags:
            i += 1 + (flags[flag] if '=' not in argv[i] else 0)
            continue
        kept.append(argv[i])
        i += 1
    return kept


def _header(folder: Path, options: Sequence[str], what: str) -> list[str]:
    return ['#!/bin/bash', *(f'#SBATCH {o}' for o in options),
            f'# Written {datetime.datetime.now().isoformat(timespec="seconds")} by lightyaml --launcher slurm: {what}',
            'set -u', f'cd {shlex.quote(str(PROJECT_ROOT))}']


def array_script(name: str, folder: Path, commands: Sequence[Sequence[str]], sbatch_options: Sequence[str],
                 gpu: bool) -> str:
    """The text of the array script: task i runs `commands[i]` with this Python."""
    options = [f'--job-name={name}', f'--array=0-{len(commands) - 1}', f'--output={folder}/slurm-%A_%a.out',
               '--open-mode=append', '--requeue', '--signal=B:USR1@90', *(['--gres=gpu:1'] if gpu else []),
               *(f'--{o}' for o in sbatch_options)]
    cases = [f'  {i}) command=({shlex.join([sys.executable, *c])}) ;;' for i, c in enumerate(commands)]
    summary = shlex.quote(str(folder / 'summary.sh'))
    return '\n'.join([
        *_header(folder, options, f'sbatch {folder}/slurm.sh; run one task here: '
                                  f'SLURM_ARRAY_TASK_ID=0 bash {folder}/slurm.sh'),
        f'export {GROUP_ENV}={shlex.quote(name.rsplit("-", 1)[0])}'
        '   # the runs\' group (W&B) or experiment (MLflow) in trackers',
        f'export {REQUEUED_BY}=slurm.sh   # on USR1 the run only stops; this script requeues the task',
        'task=${SLURM_ARRAY_TASK_ID:-0}',
        'case "$task" in',
        *cases,
        '  *) echo "lightyaml: no array task $task" >&2; exit 2 ;;',
        'esac',
        '',
        '# The summary, once every task has ended: the first task submits summary.sh, once.',
        'if [ "$task" = 0 ] && [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then',
        f'  sbatch --dependency=afterany:"$SLURM_ARRAY_JOB_ID" {summary} ||',
        '    echo "lightyaml: summary.sh not submitted; run it with bash once every task has ended" >&2',
        'fi',
        '',
        '# USR1 comes 90 s before SLURM stops the task: the run stops at its next batch (the last epoch\'s',
        '# last.ckpt stays) and the task goes back in the queue; it then runs the same command, which',
        '# continues the run as if it had not stopped.',
        'child=',
        'requeue() {',
        '  echo "lightyaml: task $task stopping for a requeue"',
        '  if [ -n "$child" ]; then kill -USR1 "$child" 2>/dev/null; wait "$child"; fi',
        '  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then',
        '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${task}"',
        '  else',
        '    echo "lightyaml: not a SLURM job, nothing to requeue: run task $task again to continue it"',
        '  fi',
        '  exit 0',
        '}',
        'trap requeue USR1',
        '# TERM (scancel, the end of the time limit): pass it on; the run keeps last.ckpt and exits 143.',
        'stop() { if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child"; exit $?; fi; exit 143; }',
        'trap stop TERM',
        '"${command[@]}" &   # in the background, so that the trap runs as soon as USR1 arrives',
        'child=$!',
        'wait "$child"',
        '',
    ])


def summary_script(name: str, folder: Path, command: Sequence[str], sbatch_options: Sequence[str]) -> str:
    """The text of the summary job: `command` (the sweep's or search's, with --summarize) with this Python."""
    options = [f'--job-name={name}-summary', f'--output={folder}/slurm-summary-%j.out',
               *(f'--{o}' for o in sbatch_options if not re.match(r'(gres|gpus)', o))]
    return '\n'.join([*_header(folder, options, f'the summary, submitted by the first task of {folder}/slurm.sh '
                                                 f'to run once every task has ended; here: bash {folder}/summary.sh'),
                       f'exec {shlex.join([sys.executable, *command])}', ''])


def check_script_values(folder: Path, commands: Sequence[Sequence[str]], sbatch_options: Sequence[str]) -> None:
    """Refuse what could add a line to the script: the case lines quote every value (shlex), but
    `#SBATCH` lines and comments are read line by line, and a value is one line everywhere."""
    for option in sbatch_options:   # `#SBATCH` lines cannot be quoted: no control characters at all
        bad = next((c for c in option if unicodedata.category(c) == 'Cc'), None)
        if bad is not None:
            raise ConfigError(f'--sbatch {option!r}: holds a control character ({bad!r}); an #SBATCH line '
                              f'is one line of printable text')
    named = [('--save-root/--name', str(folder.resolve()))] + [('--launcher slurm: the command value', value)
                                                               for command in commands for value in command]
    for what, value in named:
        bad = next((c for c in value if c in '\n\r\0'), None)
        if bad is not None:
            raise ConfigError(f'{what} {value!r}: holds {_CHARACTER_NAMES[bad]}, which cannot go into the '
                              f'generated SLURM script; a value there is one line')


_CHARACTER_NAMES = {'\n': 'a newline', '\r': 'a carriage return', '\0': 'a NUL character'}


def write_array_script(folder: Path, commands: Sequence[Sequence[str]], summary: Sequence[str],
                       args: argparse.Namespace) -> int:
    """Write <folder>/slurm.sh (task i runs `commands[i]`) and <folder>/summary.sh (runs `summary`)
    and, with --submit, submit slurm.sh with sbatch."""
    if args.submit and shutil.which('sbatch') is None:
        raise ConfigError('--submit: sbatch is not on this machine; leave out --submit to only write the script')
    for option in args.sbatch:
        if '=' not in option or option.startswith('-'):
            raise ConfigError(f'--sbatch {option!r}: expected OPTION=VALUE without dashes, e.g. time=4:00:00')
    gpu = bool(args.gpu) and args.gpu != 'cpu'
    commands = [[*c, '--gpu', '0'] if gpu and '--gpu' not in c else list(c) for c in commands]
    check_script_values(folder, [*commands, summary], args.sbatch)
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in (('slurm.sh', array_script(folder.name, folder.resolve(), commands, args.sbatch, gpu)),
                       ('summary.sh', summary_script(folder.name, folder.resolve(), summary, args.sbatch))):
        (folder / file).write_text(text)
        (folder / file).chmod(0o755)
    script = folder / 'slurm.sh'
    print(f'wrote {display_path(script)}: {len(commands)} array tasks; the first submits summary.sh, which writes '
          f'the summary once every task has ended')
    if not args.submit:
        print(f'submit it with: sbatch {display_path(script)}')
        return 0
    return subprocess.run(['sbatch', str(script)]).returncode
