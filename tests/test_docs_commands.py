"""Every command of the docs works as written: each ```bash block of README.md and docs/*.md is run
as a user pastes it, in a fresh copy of the project, and must exit as its page says.

- Each page gets a copy of its own: the files git would commit (tracked, plus untracked ones git does
  not ignore), nothing of save/ or load/. Its blocks run there in page order, each with
  `bash -e -o pipefail -c BLOCK` from the copy's root, this Python first on PATH, no --save-root added
  (the copy's own save/).
- The one shortening: LIGHTYAML_MAX_EPOCHS=1 in the environment, which both entry points honour by
  adding `trainer_params.max_epochs=1` after a command's own overrides (lightyaml/launch/cli.py;
  docs/command-line.md). So a block's numbers are not checked here; a page that quotes numbers says
  which of its commands gave them, and when.
- `pip install -r X && CMD` runs CMD only: the packages are installed already, and the tests use no network.
- A block whose first line is `# needs: REASON` (a GPU, the network, a cluster, a server) is skipped
  with that reason.
- A block whose first line is `# exits: N` shows an error on purpose and must exit with status N;
  every other block must exit 0. Outputs and error lines belong in ```text blocks, never in ```bash ones.

Each block is a test of its own, named by its page and the line of its opening fence
(`README.md:7`); run alone (`-k`), a block first runs the blocks before it on its page. All pages
took 5m35s on 2 CPU cores lightly busy with other work, 14 minutes at load average 5 (2026-12-07):
about 60 runs' start-up, and docs/sweeps-and-search.md's grid and search (8 runs and 8 trials),
hence the slow mark.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest
import yaml

from conftest import DIGITS, ROOT, RUNNERS

PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
FENCE = re.compile(r'^( *)```bash\n(.*?)^\1```', re.MULTILINE | re.DOTALL)   # in a list item: indented
NEEDS = re.compile(r'# needs: (.+)')
EXITS = re.compile(r'# exits: (\d+)\b')


@dataclasses.dataclass(frozen=True)
class Block:
    page: str     # README.md, docs/configs.md
    line: int     # the line of its opening fence
    text: str

    @property
    def needs(self) -> Optional[str]:
        """Why the block cannot run here (its `# needs:` line), or None."""
        match = NEEDS.fullmatch(self.text.splitlines()[0].strip())
        return match[1] if match else None

    @property
    def exit_status(self) -> int:
        match = EXITS.match(self.text.splitlines()[0].strip())
        return int(match[1]) if match else 0

    def as_run(self) -> str:
        """The block as the test runs it: `pip install ... && CMD` is CMD."""
        lines = []
        for line in self.text.splitlines():
            if line.startswith('pip install '):
                line = line.partition(' && ')[2]
            lines.append(line)
        return '\n'.join(lines) + '\n'


def page_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    name = page.relative_to(ROOT).as_posix()
    return [Block(name, text.count('\n', 0, m.start()) + 1, textwrap.dedent(m[2])) for m in FENCE.finditer(text)]


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def fresh_copy(dest: Path) -> Path:
    """The project as a fresh clone has it: what git would commit (or, outside git, the tree less
    its save/, load/ and caches)."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                            capture_output=True, text=True) if shutil.which('git') else None
    if listed is None or listed.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns('.git', '__pycache__', '.pytest_cache',
                                                                  '.hypothesis', 'save', 'load'))
        (dest / 'save').mkdir()
        (dest / 'load').mkdir()
        return dest
    for name in listed.stdout.split('\0'):
        source = ROOT / name
        if name and source.is_file():   # a tracked file deleted in the work tree is not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run_block(block: Block, copy: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('LIGHTYAML_', 'MLFLOW_', 'WANDB_'))}
    env.update(LIGHTYAML_MAX_EPOCHS='1', PATH=f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}')
    return subprocess.run(['bash', '-e', '-o', 'pipefail', '-c', block.as_run()], cwd=copy, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)


def check_exit(block: Block, done: subprocess.CompletedProcess, what: str = '') -> None:
    assert done.returncode == block.exit_status, (
        f'{what}{block.page}:{block.line} exited {done.returncode}, not {block.exit_status}:\n{block.text}\n'
        f'--- output (end) ---\n{(done.stdout + done.stderr)[-4000:]}')


@dataclasses.dataclass
class PageCopy:
    path: Path
    done: set[int] = dataclasses.field(default_factory=set)   # lines of the blocks run in it


@pytest.fixture(scope='module')
def page_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageCopy]:
    """One copy of the project per page, made when its first block runs."""
    return {}


@pytest.mark.parametrize('entry', RUNNERS)
def test_both_entry_points_honour_the_shortening_after_the_commands_own_overrides(
        entry: str, save_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('LIGHTYAML_MAX_EPOCHS', '1')
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'short', 'trainer_params.max_epochs=5') == 0
    out = capsys.readouterr().out
    assert out.startswith('note: LIGHTYAML_MAX_EPOCHS=1: training stops after 1 epoch (trainer_params.max_epochs=1)\n')
    log = (save_root / 'short' / 'log.txt').read_text().splitlines()
    assert [line.split()[1] for line in log if line.startswith('epoch ')] == ['1/1']
    assert yaml.safe_load((save_root / 'short' / 'config.yaml').read_text())['trainer_params']['max_epochs'] == 1
    monkeypatch.setenv('LIGHTYAML_MAX_EPOCHS', 'one')
    with pytest.raises(SystemExit) as exited:
        RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'bad')
    assert exited.value.code == 2 and capsys.readouterr().err == (
        'error: LIGHTYAML_MAX_EPOCHS=one: expected a whole number of epochs from 1 (see --help)\n')
    assert not (save_root / 'bad').exists()


def test_every_bash_block_is_bash_and_says_why_it_is_skipped() -> None:
    """Cheap checks of every block, run with the fast tests: it parses as bash, a `# needs:` line
    gives a reason, and no pasted block holds a prompt, an output line or a placeholder choice."""
    assert BLOCKS, 'no ```bash block found'
    for block in BLOCKS:
        where = f'{block.page}:{block.line}'
        parsed = subprocess.run(['bash', '-n', '-c', block.as_run()], capture_output=True, text=True)
        assert parsed.returncode == 0, f'{where}: not bash: {parsed.stderr}'
        first = block.text.splitlines()[0].strip()
        assert not first.startswith('# needs') or block.needs, f'{where}: `# needs: REASON` without a reason'
        for line in block.text.splitlines():
            assert not line.startswith(('$ ', 'error: ', 'epoch ')), f'{where}: output in a bash block: {line}'
            assert not re.search(r'\[--\w[^]]* \| ', line), f'{where}: a choice bash would read as a pipe: {line}'


@pytest.mark.slow
@pytest.mark.parametrize('block', BLOCKS, ids=[f'{b.page}:{b.line}' for b in BLOCKS])
def test_the_block_runs_as_written(block: Block, page_copies: dict[str, PageCopy],
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    if block.needs:
        pytest.skip(f'needs {block.needs}')
    if block.page not in page_copies:
        page_copies[block.page] = PageCopy(fresh_copy(tmp_path_factory.mktemp(re.sub(r'\W', '_', block.page))))
    copy = page_copies[block.page]
    for earlier in page_blocks(ROOT / block.page):   # those not run yet (this block selected alone)
        if earlier.line >= block.line:
            break
        if earlier.line not in copy.done and not earlier.needs:
            copy.done.add(earlier.line)
            check_exit(earlier, run_block(earlier, copy.path), 'an earlier block: ')
    copy.done.add(block.line)
    check_exit(block, run_block(block, copy.path))
