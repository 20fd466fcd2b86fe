"""The errors a user's input can cause, and how messages name files and close matches.

The lowest layer: imports nothing of the project. A ConfigError is printed as one line per
problem with exit status 2; the others as one line with exit status 1 (lightyaml/launch/cli.py).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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

    def no_checkpoint(self) -> NonFiniteLossError:
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


class RunStoppedError(Exception):
    """A run under way stopped on an error (a full disk, a raising dataset): one line, exit status 1."""


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith('..') else relative
