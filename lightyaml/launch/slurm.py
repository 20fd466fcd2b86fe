"""`--launcher slurm`: an sbatch array script whose tasks are a search's workers or a sweep's grid
points, each continuing where it stopped when SLURM requeues it (preemption, time limit).

SLURM sends USR1 90 s before it stops a task; the script's trap stops the run (its last
checkpoint stays) and requeues the task, which runs the same command again: a grid point with
--auto-resume, a search worker that fails and retries its interrupted trial from its folder.
The script is plain bash: without SLURM, `SLURM_ARRAY_TASK_ID=1 bash slurm.sh` runs task 1 here.
Lightning-free.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from lightyaml.errors import PROJECT_ROOT, ConfigError, display_path
from lightyaml.run.trackers import GROUP_ENV


def array_script(name: str, folder: Path, commands: Sequence[Sequence[str]], sbatch_options: Sequence[str],
                 gpu: bool) -> str:
    """The text of the array script: task i runs `commands[i]` with this Python."""
    options = [f'--job-name={name}', f'--array=0-{len(commands) - 1}', f'--output={folder}/slurm-%A_%a.out',
               '--open-mode=append', '--requeue', '--signal=B:USR1@90', *(['--gres=gpu:1'] if gpu else []),
               *(f'--{o}' for o in sbatch_options)]
    cases = [f'  {i}) command=({shlex.join([sys.executable, *c])}) ;;' for i, c in enumerate(commands)]
    return '\n'.join([
        '#!/bin/bash',
        *(f'#SBATCH {o}' for o in options),
        f'# Written {datetime.datetime.now().isoformat(timespec="seconds")} by lightyaml --launcher slurm.',
        f'# Submit: sbatch {folder}/slurm.sh   Run one task here: SLURM_ARRAY_TASK_ID=0 bash {folder}/slurm.sh',
        'set -u',
        f'cd {shlex.quote(str(PROJECT_ROOT))}',
        f'export {GROUP_ENV}={shlex.quote(name.rsplit("-", 1)[0])}'
        '   # the runs\' group (W&B) or experiment (MLflow) in trackers',
        'task=${SLURM_ARRAY_TASK_ID:-0}',
        'case "$task" in',
        *cases,
        '  *) echo "lightyaml: no array task $task" >&2; exit 2 ;;',
        'esac',
        '',
        '# USR1 comes 90 s before SLURM stops the task: stop the run (its last checkpoint stays) and',
        '# put the task back in the queue; it then runs the same command, which continues the run.',
        'requeue() {',
        '  echo "lightyaml: task $task stopping for a requeue"',
        '  kill -TERM "$child" 2>/dev/null; wait "$child"',
        '  if command -v scontrol >/dev/null; then scontrol requeue "${SLURM_ARRAY_JOB_ID}_${task}"; fi',
        '  exit 0',
        '}',
        'trap requeue USR1',
        '# TERM (scancel, the end of the time limit): pass it on; the run keeps last.ckpt and exits 143.',
        'trap \'kill -TERM "$child" 2>/dev/null; wait "$child"; exit $?\' TERM',
        '"${command[@]}" &   # in the background, so that the trap runs as soon as USR1 arrives',
        'child=$!',
        'wait "$child"',
        '',
    ])


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


def write_array_script(folder: Path, commands: Sequence[Sequence[str]], args: argparse.Namespace) -> int:
    """Write <folder>/slurm.sh and, with --submit, submit it with sbatch."""
    if args.submit and shutil.which('sbatch') is None:
        raise ConfigError('--submit: sbatch is not on this machine; leave out --submit to only write the script')
    for option in args.sbatch:
        if '=' not in option or option.startswith('-'):
            raise ConfigError(f'--sbatch {option!r}: expected OPTION=VALUE without dashes, e.g. time=4:00:00')
    gpu = bool(args.gpu) and args.gpu != 'cpu'
    commands = [[*c, '--gpu', '0'] if gpu and '--gpu' not in c else list(c) for c in commands]
    check_script_values(folder, commands, args.sbatch)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / 'slurm.sh'
    script.write_text(array_script(folder.name, folder.resolve(), commands, args.sbatch, gpu))
    script.chmod(0o755)
    print(f'wrote {display_path(script)}: {len(commands)} array tasks')
    if not args.submit:
        print(f'submit it with: sbatch {display_path(script)}')
        return 0
    return subprocess.run(['sbatch', str(script)]).returncode
