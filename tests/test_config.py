"""Config files: safe YAML, `extends`, dotted overrides, and validation with one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import DIGITS, run_pl
from lightyaml.config.loading import load_config
from utils import ConfigError


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_extends_deep_merges_and_overrides_parse_values_as_yaml(tmp_path: Path) -> None:
    child = write(tmp_path / 'child.yaml', f'extends: {DIGITS}\ntrainer_params: {{max_epochs: 2}}\n')
    cfg = load_config(child, ['train_wrapper.args.optim_spec.args.lr=1e-2',
                              'train_wrapper.args.model_spec.args.hidden=[32, 16]',
                              'trainer_params.precision=bf16-mixed'])
    assert cfg['trainer_params'] == {'max_epochs': 2, 'log_every_n_steps': 10, 'enable_model_summary': False,
                                     'precision': 'bf16-mixed'}
    assert cfg['train_wrapper']['args']['optim_spec'] == {'name': 'Adam', 'args': {'lr': 0.01}}
    assert cfg['train_wrapper']['args']['model_spec']['args']['hidden'] == [32, 16]
    assert 'extends' not in cfg
    assert cfg.where('trainer_params.max_epochs').endswith('child.yaml')
    assert cfg.where('data_module.args.batch_size').endswith('digits.yaml')
    assert cfg.where('trainer_params.precision') == "override 'trainer_params.precision=bf16-mixed'"


def test_scientific_floats_are_floats_and_list_items_can_be_overridden(tmp_path: Path) -> None:
    path = write(tmp_path / 'c.yaml', 'a: 1e-3\nb: [{x: 1}, {x: 2}]\n')
    cfg = load_config(path, ['b.1.x=5'])
    assert cfg['a'] == 0.001 and isinstance(cfg['a'], float)
    assert cfg['b'] == [{'x': 1}, {'x': 5}]


@pytest.mark.parametrize('text, message', [
    ('a: [1, 2\n', 'c.yaml:2:1: invalid YAML: expected \',\' or \']\', but got \'<stream end>\''),
    ('', 'c.yaml: the config file is empty'),
    ('- 1\n', 'c.yaml: a config must be a mapping of sections, not a list'),
    ('a: 1\na: 2\n', 'c.yaml:2:1: invalid YAML: duplicate key \'a\''),
    ('x: !!python/object/apply:os.system ["touch pwned"]\n',
     "c.yaml:1:4: invalid YAML: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
    ('extends: c.yaml\n', 'c.yaml: extends: circular: '),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                       message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / 'c.yaml', text)
    with pytest.raises(ConfigError) as error:
        load_config('c.yaml')
    assert str(error.value).startswith(message)
    assert '\n' not in str(error.value)
    assert not (tmp_path / 'pwned').exists()


def test_all_problems_of_a_config_are_reported_together(tmp_path: Path, save_root: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    bad = write(tmp_path / 'bad.yaml', f'''extends: {DIGITS}
train_wrapper:
  args:
    model_spec: {{name: mlp, args: {{hidden: 3}}}}
    metrics: {{acc: {{name: Accuracyy}}}}
checkpoint: {{monitor: 3}}
''')
    assert run_pl(save_root, '--config', bad) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'error: {bad}: train_wrapper.args.model_spec.args.hidden: expected Sequence, got int 3',
        f"error: {bad}: train_wrapper.args.metrics.acc.name: unknown metric 'Accuracyy' (did you mean 'Accuracy'?); "
        'registered: ' + ', '.join(__import__('utils').METRICS.names()),
        f'error: {bad}: checkpoint.monitor: expected str, got int 3',
    ]


def test_debug_shows_the_traceback(save_root: Path) -> None:
    with pytest.raises(ConfigError):
        run_pl(save_root, '--config', DIGITS, 'seed=-1', '--debug')


def test_a_drawn_seed_is_new_each_run_and_shared_only_with_ddp_children(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightyaml.config.loading import resolve_seed
    monkeypatch.setenv('LIGHTYAML_SEED', '7')
    for var in ('RANK', 'LOCAL_RANK', 'NODE_RANK', 'SLURM_PROCID'):
        monkeypatch.delenv(var, raising=False)
    first, second = resolve_seed({'seed': None}), resolve_seed({'seed': None})
    assert first != second and first != 7   # rank 0 draws anew, whatever an earlier run exported
    assert os.environ['LIGHTYAML_SEED'] == str(second)
    monkeypatch.setenv('LOCAL_RANK', '1')   # a process Lightning's launcher started
    assert resolve_seed({'seed': None}) == second
    assert resolve_seed({'seed': -1}) == -1 and os.environ['LIGHTYAML_SEED'] == str(second)   # not exported
