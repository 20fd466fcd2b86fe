"""Safety properties of the code itself: safe YAML, weights-only checkpoint loading, no shell,
experiment folders that cannot escape the save root."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from lightyaml.config.loading import _Loader
from lightyaml.run.experiment_dir import ExperimentDir
from utils import ConfigError

SOURCES = sorted(p for p in ROOT.rglob('*.py') if not {'save', 'load', '.git'} & set(p.relative_to(ROOT).parts))


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `module.name(...)` in the project's own Python files."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append((path, node))
    return found


def keyword(call: ast.Call, name: str) -> object:
    return next((ast.literal_eval(k.value) if isinstance(k.value, ast.Constant) else ast.unparse(k.value)
                 for k in call.keywords if k.arg == name), None)


def test_every_checkpoint_load_is_weights_only() -> None:
    loads = [(p, c) for p, c in calls('load') if ast.unparse(c.func) == 'torch.load']
    assert loads, 'the scan found no torch.load at all'
    assert [f'{p}:{c.lineno}' for p, c in loads if keyword(c, 'weights_only') is not True] == []


def test_yaml_is_loaded_only_through_the_safe_loader() -> None:
    assert issubclass(_Loader, yaml.SafeLoader)
    loads = [(p, c) for p, c in calls('load') if ast.unparse(c.func) == 'yaml.load']
    assert [f'{p}:{c.lineno}' for p, c in loads if keyword(c, 'Loader') != '_Loader'] == []
    assert [f'{p}:{c.lineno}' for p, c in calls('unsafe_load') + calls('full_load')] == []


def test_no_subprocess_goes_through_a_shell() -> None:
    runs = [(p, c) for name in ('run', 'Popen', 'call', 'check_output', 'check_call') for p, c in calls(name)]
    assert [f'{p}:{c.lineno}' for p, c in runs if keyword(c, 'shell') not in (None, False)] == []
    assert [f'{p}:{c.lineno}' for p, c in calls('system') if ast.unparse(c.func) == 'os.system'] == []


@settings(deadline=None)
@given(name=st.text(min_size=0, max_size=20) | st.sampled_from(['..', '.', '../x', 'a/../../b', '/etc', '~', 'a\\b']))
def test_an_experiment_folder_is_inside_the_save_root_or_refused(name: str) -> None:
    root = Path('/tmp/lightyaml-save-root')
    try:
        exp = ExperimentDir.for_name(root, name)
    except ConfigError as e:
        assert str(e).startswith('--name ') and '\n' not in str(e)
        return
    assert exp.path.resolve().parent == root.resolve() and exp.path.name == name
