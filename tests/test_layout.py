"""The layout checked by tools: the import contracts of pyproject.toml (`lint-imports`), ruff, no import
cycle, a docstring on every package, YAML-only configs, functions that fit on a screen, and a reason for
every import made inside a function."""
from __future__ import annotations

import ast
import subprocess
import tomllib

import grimp
import pytest

from conftest import ROOT

ROOT_PACKAGES = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['importlinter']['root_packages']
TOP_LEVEL_FILES = sorted(p.stem for p in ROOT.glob('*.py'))   # utils, train, train_pl: grimp takes packages only
PROJECT_FILES = sorted(p for p in ROOT.rglob('*.py') if not {'save', 'load', 'tests'} & set(p.relative_to(ROOT).parts)
                       and not any(part.startswith('.') for part in p.relative_to(ROOT).parts))
# Classes whose constructor arguments are a config's `args` keys: registered ones, and those on these bases
# (models and wrappers, data, Lightning callbacks and loggers, train.py's trackers).
CONFIG_BASES = {'Module', 'LightningModule', 'LightningDataModule', 'Dataset', 'Callback', 'Logger', 'Tracker'}


def run(*command: str) -> subprocess.CompletedProcess:
    """`command` run from the repo root, as CI and the pre-commit hooks run it."""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope='module')
def graph() -> grimp.ImportGraph:
    """The import graph lint-imports checks, plus what the top-level files import: grimp cannot read a
    single-file module, so their import statements are added as grimp would resolve them."""
    graph = grimp.build_graph(*ROOT_PACKAGES, include_external_packages=True, cache_dir=None)
    for name in TOP_LEVEL_FILES:
        for node in ast.walk(ast.parse((ROOT / f'{name}.py').read_text())):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [f'{node.module}.{a.name}' for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            for target in targets:   # `from a.b import c`: the module a.b.c if there is one, else a.b
                while target not in graph.modules and '.' in target:
                    target = target.rsplit('.', 1)[0]
                graph.add_import(importer=name, imported=target, line_number=node.lineno,
                                 line_contents=ast.unparse(node))
    return graph


def test_the_import_contracts_hold() -> None:
    top_level_packages = sorted(p.parent.name for p in ROOT.glob('*/__init__.py'))
    assert sorted(ROOT_PACKAGES) == top_level_packages, 'pyproject.toml: root_packages must list every package'
    result = run('lint-imports')
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = run('ruff', 'check', '--output-format', 'concise', '.')
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(('importer', 'forbidden'), [
    ('train', ['pytorch_lightning', 'lightning_fabric', 'lightning', 'train_pl']),   # the loop without Lightning
    ('train_pl', ['train']),
    ('utils', ['callbacks', 'models', 'datasets', 'losses', 'train', 'train_pl'])])
def test_the_top_level_files_keep_their_layers(graph: grimp.ImportGraph, importer: str, forbidden: list[str]) -> None:
    """The contracts for the files lint-imports cannot read (pyproject.toml): train.py stays Lightning-free,
    the entry points stay independent, utils.py imports only the engine."""
    chains = [' -> '.join(chain) for module in forbidden if module in graph.modules
              if (chain := graph.find_shortest_chain(importer, module, as_packages=True))]
    assert not chains, '\n'.join(chains)


def test_no_import_cycle(graph: grimp.ImportGraph) -> None:
    ours = {m for m in graph.modules if m.split('.')[0] in {*ROOT_PACKAGES, *TOP_LEVEL_FILES}}
    cycles = set()
    for importer in ours:
        for imported in graph.find_modules_directly_imported_by(importer) & ours:
            if chain := graph.find_shortest_chain(imported, importer):   # imported -> ... -> importer
                cycle = (importer, *chain[:-1])
                start = cycle.index(min(cycle))   # each cycle once, whichever import found it
                cycles.add(' -> '.join((*cycle[start:], *cycle[:start], cycle[start])))
    assert not cycles, '\n'.join(sorted(cycles))


def test_every_package_says_what_it_holds_on_its_first_line() -> None:
    packages = [p for p in PROJECT_FILES if p.name == '__init__.py']
    assert len(packages) >= 10   # lightyaml and its 4 sub-packages, the 4 card folders, models/wrappers
    missing = [str(p.relative_to(ROOT)) for p in packages
               if not (ast.get_docstring(ast.parse(p.read_text()), clean=False) or '').split('\n')[0].strip()]
    assert not missing, f'no docstring, or an empty first line: {missing}'


def test_configs_holds_only_yaml() -> None:
    others = [str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*')
              if p.is_file() and p.suffix not in {'.yaml', '.yml'} and '__pycache__' not in p.parts]
    assert not others, f'configs/ is for YAML: {others}'


def is_config_class(cls: ast.ClassDef) -> bool:
    registered = any(isinstance(d, ast.Call) and ast.unparse(d.func).split('.')[-1].startswith('register')
                     for d in cls.decorator_list)
    return registered or any(ast.unparse(b).split('.')[-1] in CONFIG_BASES for b in cls.bases)


# check_kwargs: the (target, kwargs, key, cfg, problems) every check takes, plus what/refused/required;
# run_once: the bench's one measured process.
OVER_SIX = {'lightyaml/config/checking.py check_kwargs', 'bench/run.py run_once'}


def test_functions_fit_on_a_screen() -> None:
    """No function (outside tests/) is longer than 60 lines, def to last line, or takes more than 6
    parameters besides self/cls, *args and **kwargs included. Exempt from the parameter count only:
    the `__init__` of a class decorated with a `register...(...)` call or with a base named in
    CONFIG_BASES (`nn.Module`, `pl.Callback`, ...): its parameters are the keys of a config's `args`;
    and the two in OVER_SIX, which take 7 and 8 ("about 6")."""
    offenders = []
    for path in PROJECT_FILES:
        tree = ast.parse(path.read_text())
        exempt = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and is_config_class(c)
                  for f in c.body if isinstance(f, ast.FunctionDef) and f.name == '__init__'}
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a, where = f.args, f'{path.relative_to(ROOT)}:{f.lineno} {f.name}'
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
            if (lines := f.end_lineno - f.lineno + 1) > 60:
                offenders.append(f'{where}: {lines} lines')
            params = len(names) - (names[:1] in (['self'], ['cls']))
            if (params > 6 and id(f) not in exempt
                    and not (params <= 8 and where.split(':')[0] + ' ' + f.name in OVER_SIX)):
                offenders.append(f'{where}: {params} parameters')
    assert not offenders, '\n'.join(offenders)


def test_every_import_inside_a_function_says_why() -> None:
    """An import made inside a function (an optional or heavy dependency, loaded when used) carries a
    comment on its line, or a comment line above it or above the block of imports (blank lines
    allowed, as the import sorter puts them) that it belongs to."""
    unexplained = []
    for path in (p for p in PROJECT_FILES if p.relative_to(ROOT).parts[0] != 'bench'):
        lines = (source := path.read_text()).splitlines()
        functions = [f for f in ast.walk(ast.parse(source)) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        imports = {n for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        import_lines = {i for n in imports for i in range(n.lineno, n.end_lineno + 1)}
        for node in sorted(imports, key=lambda n: n.lineno):
            above = node.lineno - 1
            while above in import_lines or not lines[above - 1].strip():   # up the block of imports
                above -= 1
            if not ('#' in ''.join(lines[node.lineno - 1:node.end_lineno]) or lines[above - 1].strip().startswith('#')):
                unexplained.append(f'{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}')
    assert not unexplained, 'say why it is imported here:\n' + '\n'.join(unexplained)
