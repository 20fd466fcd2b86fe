"""The layout's own rules: one home per concern, each rule written once, files a person can read."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conftest import DIGITS, ROOT, RUNNERS

PROJECT_FILES = [p for p in ROOT.rglob('*.py')
                 if not {'save', 'load', 'tests', '.git'} & set(p.relative_to(ROOT).parts)]


def test_base_wrapper_takes_exactly_the_task_arguments() -> None:
    from lightyaml.train.task import Task
    from models.wrappers.base import BaseWrapper
    task = inspect.signature(Task.__init__).parameters
    wrapper = inspect.signature(BaseWrapper.__init__).parameters
    assert ([(p.name, p.default, p.kind) for p in wrapper.values()]
            == [(p.name, p.default, p.kind) for p in task.values()])
    # ... and passes them on by keyword, so a reordering in Task cannot shift them silently.
    init = ast.parse(inspect.getsource(BaseWrapper.__init__).strip()).body[0]
    super_call = next(n for n in ast.walk(init)
                      if isinstance(n, ast.Call) and ast.unparse(n.func) == 'super().__init__')
    assert super_call.args == [] and [k.arg for k in super_call.keywords] == [n for n in task if n != 'self']


def test_no_project_file_but_train_py_is_longer_than_about_450_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PROJECT_FILES
            if (n := len(p.read_text().splitlines())) > 460 and p.name != 'train.py'}
    assert long == {}
    assert len((ROOT / 'utils.py').read_text().splitlines()) <= 400


def test_test_files_share_helpers_only_through_conftest() -> None:
    imports = []
    for path in (ROOT / 'tests').glob('test_*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            imports += [f'{path.name}: {n}' for n in names if n.startswith('test_')]
    assert imports == []


def test_each_rule_has_one_home() -> None:
    """The NaN check, scheduler stepping and the last-batch test are each defined once."""
    defined: dict[str, list[str]] = {}
    for path in PROJECT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert defined['FiniteLossGuard'] == ['lightyaml/train/task.py']
    assert defined['step_schedulers'] == ['lightyaml/train/optim.py']
    assert defined['monitored_value'] == ['lightyaml/train/optim.py']
    assert defined['is_last_train_batch'] == ['models/wrappers/__init__.py']
    sources = {p: p.read_text() for p in PROJECT_FILES}
    assert [str(p.relative_to(ROOT)) for p, s in sources.items()
            if 'raise NonFiniteLossError' in s] == ['lightyaml/train/task.py']
    assert [str(p.relative_to(ROOT)) for p, s in sources.items()
            if 'scheduler.step(' in s] == ['lightyaml/train/optim.py']


PLATEAU = ['train_wrapper.args.scheduler_spec={name: ReduceLROnPlateau, monitor: val/acc, args: {mode: max}}',
           'trainer_params.check_val_every_n_epoch=2', 'trainer_params.max_epochs=2',
           'trainer_params.limit_train_batches=2']


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_a_monitored_metric_not_logged_is_the_same_clear_error_in_every_training_path(
        entry: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert RUNNERS[entry](save_root, '--config', DIGITS, *PLATEAU) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: scheduler_spec.monitor: 'val/acc' was not logged by the end of epoch 1")
    assert 'logged: ' in err[-1] and 'train/loss' in err[-1] and 'Traceback' not in capsys.readouterr().err


def test_the_gan_wrapper_steps_its_schedulers_by_the_same_rule(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    overrides = ['train_wrapper.args.d_scheduler_spec={name: ReduceLROnPlateau, monitor: val/d_acc, interval: epoch}',
                 'trainer_params.check_val_every_n_epoch=2', 'trainer_params.max_epochs=2',
                 'trainer_params.limit_train_batches=2', 'train_wrapper.args.samples_per_epoch=0']
    assert RUNNERS['train_pl.py'](save_root, '--config', str(ROOT / 'configs' / 'digits-gan.yaml'), *overrides) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: scheduler_spec.monitor: 'val/d_acc' was not logged by the end of epoch 1")
