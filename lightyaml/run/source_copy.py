"""What a run copies of the project into its `src/`: the files git tracks plus the untracked files git
would not ignore (outside a git checkout: the same rules, read from the tree's .gitignore files),
but those `.gitattributes` marks `export-ignore` (what `git archive` leaves out: this repository's
tests, docs and benchmark), never a file that looks like a secret, none over MAX_FILE_BYTES, with
the modes the umask gives.

Lightning- and torch-free; lightyaml/run/experiment_dir.py calls it when it creates a folder.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

# A source file is small: anything bigger is data kept beside the code (and would slow every start).
MAX_FILE_BYTES = 1 << 20
_LIMIT = '1 MiB'
# Folders never copied, whatever .gitignore says: data, runs, git itself, caches and virtualenvs.
SKIP_DIRS = {'save', 'load', '.git', '__pycache__', '.pytest_cache', '.hypothesis', 'venv', '.venv', 'env', '.tox',
             '.mypy_cache', '.ruff_cache', 'node_modules', 'lightning_logs'}
# File names (case-insensitive) that hold keys, passwords or tokens.
_SECRET_NAME = re.compile(
    r'\.env(\..*)?|\.envrc|\.netrc|_netrc|\.pgpass|\.htpasswd|\.pypirc|\.npmrc'
    r'|.*\.(pem|key|p12|pfx|jks|keystore)'
    r'|id_[a-z0-9_-]+(\.pub)?')                      # ssh keys: id_rsa, id_ed25519.pub, id_work
# The same by a word in the name, for files other than Python modules: secrets.yaml, client_secret.json,
# credentials.json, token.txt, hf_token, api-tokens.json. Not tokenizer.py or detokenize.py (`token` must be a
# whole word), nor a module such as secrets.py (code is what src/ is for; Python's own `secrets` is one).
_SECRET_WORD = re.compile(r'.*(secret|credential|password|passwd).*|(.*[^a-z])?tokens?([^a-z].*)?')
# Folders whose every file is a secret (and, but for Python modules, a folder named by one of those words).
_SECRET_FOLDER = re.compile(r'\.ssh|\.gnupg|\.aws')
_SHOWN = 20   # skipped files named in log.txt; the rest are counted
# git refuses a checkout another user owns ("dubious ownership"); we already run that checkout's code, so
# trusting its git config adds no risk, and another user's run records the same files and commit.
GIT = ('git', '-c', 'safe.directory=*')


def copy_source(root: Path, dest: Path, keep_folder: Callable[[Path], bool] = lambda folder: True) -> list[str]:
    """Copy the project's source files below `root` into `dest`; returns the skipped ones, each as
    'path (why)'. Folders for which `keep_folder` is false (the save root, experiment folders) are
    left out silently, as SKIP_DIRS and virtualenvs are."""
    skipped = []
    for rel in source_files(root, keep_folder):
        source = root / rel
        reason = skip_reason(source, rel, root)
        if reason == '':   # not a plain file (a link to a folder, a socket): nothing to copy
            continue
        if reason:
            skipped.append(f'{rel} ({reason})')
            continue
        try:
            src = open(source, 'rb')
        except OSError as e:   # another user's private file: the run goes on without it
            skipped.append(f'{rel} (cannot be read: {e.strerror})')
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with src, open(target, 'wb') as out:   # content only: the mode is the umask's, not the source's
            out.write(src.read())
        times = os.stat(source)
        os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
    return skipped


def skip_reason(source: Path, rel: str, root: Path) -> Optional[str]:
    """Why `source` is not copied: None to copy it, '' if it is no plain file, else the reason."""
    if looks_like_secret(rel):
        return 'looks like a secret'
    try:
        if source.is_symlink() and not source.resolve().is_relative_to(root.resolve()):
            return 'a link out of the project'
        info = os.stat(source)
    except OSError:   # a dangling link, or a file removed meanwhile
        return ''
    if not stat.S_ISREG(info.st_mode):
        return ''
    if info.st_size > MAX_FILE_BYTES:
        return f'{info.st_size / (1 << 20):.1f} MiB, over the {_LIMIT} limit'
    return None


def looks_like_secret(rel: str) -> bool:
    """Whether the file at `rel` (relative to the project, with '/') is named like a key, a password or a token."""
    *folders, name = rel.lower().split('/')
    if _SECRET_NAME.fullmatch(name) or any(_SECRET_FOLDER.fullmatch(folder) for folder in folders):
        return True
    return not name.endswith('.py') and any(_SECRET_WORD.fullmatch(part) for part in [*folders, name])


def skipped_line(skipped: list[str]) -> Optional[str]:
    """The log.txt line naming the skipped files (the first _SHOWN of them), or None."""
    if not skipped:
        return None
    more = f', and {len(skipped) - _SHOWN} more' if len(skipped) > _SHOWN else ''
    files = 'file' if len(skipped) == 1 else 'files'
    return f'src/: skipped {len(skipped)} {files}: {", ".join(skipped[:_SHOWN])}{more}'


def source_files(root: Path, keep_folder: Callable[[Path], bool]) -> list[str]:
    """The files to copy, as paths relative to `root` with '/': git's list when `root` is in a git
    checkout, else a walk that follows the .gitignore files."""
    listed = git_files(root)
    if not listed:   # no git, not a checkout, or a folder the enclosing repository ignores whole
        return sorted(walk_unignored(root, keep_folder))
    kept: dict[str, bool] = {'': True}

    def folder_kept(folder: str) -> bool:
        if folder not in kept:
            parent, _, name = folder.rpartition('/')
            kept[folder] = folder_kept(parent) and _usable_folder(root / folder, name, keep_folder)
        return kept[folder]
    listed = [rel for rel in listed if folder_kept(rel.rpartition('/')[0])]
    left_out = export_ignored(root, listed)
    return sorted(rel for rel in listed if rel not in left_out)


def export_ignored(root: Path, paths: list[str]) -> set[str]:
    """The paths that .gitattributes marks `export-ignore` (`git check-attr`)."""
    try:
        done = subprocess.run([*GIT, 'check-attr', '-z', '--stdin', 'export-ignore'], cwd=root, capture_output=True,
                              input=b'\0'.join(os.fsencode(p) for p in paths), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    fields = done.stdout.split(b'\0')   # path, attribute, value, path, ...
    return {os.fsdecode(fields[i]) for i in range(0, len(fields) - 2, 3) if fields[i + 2] == b'set'}


def git_files(root: Path) -> Optional[list[str]]:
    """What git tracks below `root` plus the untracked files it would not ignore; None without git."""
    try:
        done = subprocess.run([*GIT, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                              cwd=root, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:   # not a checkout
        return None
    return sorted({os.fsdecode(p) for p in done.stdout.split(b'\0') if p})


def _usable_folder(folder: Path, name: str, keep_folder: Callable[[Path], bool]) -> bool:
    return name not in SKIP_DIRS and not (folder / 'pyvenv.cfg').exists() and keep_folder(folder)


def walk_unignored(root: Path, keep_folder: Callable[[Path], bool]) -> Iterable[str]:
    """The files below `root` that its .gitignore files do not ignore (each applies to its folder)
    and its .gitattributes files do not mark `export-ignore`."""
    pending = [(root, '', IgnoreRules(), IgnoreRules())]
    while pending:
        folder, rel, rules, exports = pending.pop()
        rules = rules.read(folder / '.gitignore', rel)
        exports = exports.read(folder / '.gitattributes', rel, attribute='export-ignore')
        try:
            entries = list(os.scandir(folder))
        except OSError:   # a folder we may not list: nothing of it is copied
            continue
        for entry in entries:
            path = f'{rel}/{entry.name}' if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if rules.ignored(path, is_dir):
                continue
            if not is_dir:
                if not exports.ignored(path, False):
                    yield path
            elif _usable_folder(Path(entry.path), entry.name, keep_folder):
                pending.append((Path(entry.path), path, rules, exports))


class IgnoreRules:
    """The patterns of the .gitignore files met on the way down to a folder, in git's order: the
    last pattern that matches a path decides, and a deeper file's patterns come after its parents'.
    A path inside an ignored folder is never looked at (the walk does not enter it), as in git."""

    def __init__(self, rules: tuple[tuple[str, re.Pattern, bool, bool], ...] = ()) -> None:
        self.rules = rules   # (folder of the .gitignore, pattern, negated, folders only)

    def read(self, gitignore: Path, base: str, attribute: Optional[str] = None) -> IgnoreRules:
        """These rules followed by those of `gitignore` (in folder `base`), if it exists; with
        `attribute`, the file is a .gitattributes and its lines setting (or unsetting) it are the rules."""
        try:
            lines = gitignore.read_text(errors='replace').splitlines()
        except OSError:
            return self
        if attribute is not None:
            lines = [_attribute_line(line, attribute) for line in lines]
        added = [rule for line in lines if line and (rule := _rule(line, base))]
        return IgnoreRules(self.rules + tuple(added)) if added else self

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether `path` (relative to the root, with '/') is ignored."""
        verdict = False
        for base, pattern, negated, dirs_only in self.rules:
            if base and not path.startswith(base + '/'):
                continue
            if (is_dir or not dirs_only) and pattern.fullmatch(path[len(base) + 1:] if base else path):
                verdict = not negated
        return verdict


def _attribute_line(line: str, attribute: str) -> Optional[str]:
    """A .gitattributes line as an ignore line for `attribute`: its pattern where the line sets it,
    `!pattern` where it unsets it (`-attr`, `!attr`), else None."""
    if not line.split() or line.lstrip().startswith('#'):
        return None
    pattern, *attributes = line.split()
    if attribute in attributes:
        return pattern
    return f'!{pattern}' if f'-{attribute}' in attributes or f'!{attribute}' in attributes else None


def _rule(line: str, base: str) -> Optional[tuple[str, re.Pattern, bool, bool]]:
    """One .gitignore line as a rule, or None for a blank line or a comment."""
    line = re.sub(r'(?<!\\) +$', '', line)   # trailing spaces do not count unless escaped
    if not line or line.startswith('#'):
        return None
    negated = line.startswith('!')
    line = line[1:] if negated else line
    dirs_only = line.endswith('/')
    line = line.rstrip('/')
    if not line:
        return None
    anchored = '/' in line   # a slash at the start or in the middle ties the pattern to this folder
    regex = _translate(line.removeprefix('/'))
    return base, re.compile(regex if anchored else f'(?:.*/)?{regex}', re.DOTALL), negated, dirs_only


def _translate(pattern: str) -> str:
    """A gitignore glob as a regular expression: `*` and `?` stay within a folder, `**` crosses them."""
    out, i = [], 0
    while i < len(pattern):
        at_start = i == 0 or pattern[i - 1] == '/'
        if at_start and pattern.startswith('**/', i):
            out.append('(?:.*/)?')
            i += 3
        elif at_start and pattern[i:] == '**':
            out.append('.*')
            i += 2
        elif pattern[i] == '*':
            out.append('[^/]*')
            i += 1
        elif pattern[i] == '?':
            out.append('[^/]')
            i += 1
        elif pattern[i] == '[' and (end := pattern.find(']', i + 2)) != -1:
            body = pattern[i + 1:end]
            negate = body[0] in '!^'
            out.append(('[^' if negate else '[') + re.escape(body[1:] if negate else body).replace(r'\-', '-') + ']')
            i = end + 1
        elif pattern[i] == '\\' and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return ''.join(out)
