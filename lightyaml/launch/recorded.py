"""The commands an experiment's config.yaml records in its header, parsed back with the flags of
the entry points: what --runs shows as a run's tag and parent, and what --diff replays to learn
where each config value came from. Lightning-free and torch-free."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from lightyaml.launch.cli import make_parser
from lightyaml.run.run_state import RunState


class CommandReader:
    """The commands of config.yaml's header, parsed with the flags of the entry points. They were
    written joined by spaces: an argument holding spaces (`key={a: 1, b: 2}`) is put back together
    by its brackets and quotes."""

    def __init__(self) -> None:
        self.parser = make_parser('', parser_class=_RecordedParser)
        self.parser.usage = 'a recorded command'   # else argparse formats the whole usage for every line it parses

    def parse(self, command: str) -> Optional[argparse.Namespace]:
        """The flags of one recorded command (`python train_pl.py ...`), or None if they do not parse."""
        words = split_recorded(command)[2:]
        try:
            return self.parser.parse_intermixed_args(words)
        except (ValueError, SystemExit):   # an older or hand-written line: its parent is not known
            return None

    def parsed(self, run: RunState) -> list[Optional[argparse.Namespace]]:
        return [self.parse(command) for command in run.commands]


class _RecordedParser(argparse.ArgumentParser):
    """A parser of recorded commands: a line that does not parse is not an error to print."""

    def error(self, message: str) -> Any:
        raise ValueError(message)


def split_recorded(command: str) -> list[str]:
    """`python x.py --data {name: a, args: {b: 1}} k=[1, 2]` -> its arguments, each whole again."""
    words: list[str] = []
    for word in command.split(' '):
        if words and _open(words[-1]):
            words[-1] += ' ' + word
        elif word:
            words.append(word)
    return words


def _open(word: str) -> bool:
    """Whether an argument's brackets or quotes are still open: the next word belongs to it."""
    depth = sum(word.count(c) for c in '[{') - sum(word.count(c) for c in ']}')
    return depth > 0 or word.count("'") % 2 == 1 or word.count('"') % 2 == 1
