"""Config files: safe YAML, `extends`, dotted overrides, and validation with one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, run_pl
from utils import ConfigError, load_config

DIGITS = str(ROOT / 'configs' / 'digits.yaml')


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


# (command-line arguments, the exact error lines)
CLI_ERRORS = [
    (['--config', 'configs/nope.yaml'], ['configs/nope.yaml: config file not found']),
    (['--config', DIGITS, 'trainer_params.max_epoch=3'],
     ["override 'trainer_params.max_epoch=3': trainer_params.max_epoch: pl.Trainer does not take 'max_epoch' "
      "(did you mean 'max_epochs' or 'min_epochs' or 'max_steps'?)"]),
    (['--config', DIGITS, 'trainer_params.max_epochs=abc'],
     ["override 'trainer_params.max_epochs=abc': trainer_params.max_epochs: expected int, got str 'abc'"]),
    (['--config', DIGITS, 'train_wrapper.args.model_spec.name=mlpp'],
     ["override 'train_wrapper.args.model_spec.name=mlpp': train_wrapper.args.model_spec.name: "
      "unknown model 'mlpp' (did you mean 'mlp'?); registered: lenet5, mlp, resnet18"]),
    (['--config', DIGITS, 'train_wrapper.args.optim_spec.args.lrr=0.1'],
     ["override 'train_wrapper.args.optim_spec.args.lrr=0.1': train_wrapper.args.optim_spec.args.lrr: "
      "optimizer 'Adam' does not take 'lrr' (did you mean 'lr'?)"]),
    (['--config', DIGITS, 'trainer_paramz.max_epochs=1'],
     ["override 'trainer_paramz.max_epochs=1': trainer_paramz: unknown section (did you mean 'trainer_params'?); "
      'sections: seed, data_module, train_wrapper, trainer_params, checkpoint, callbacks']),
    (['--config', DIGITS, 'trainer_params.logger=false'],
     ["override 'trainer_params.logger=false': trainer_params.logger: lightyaml logs to the experiment folder "
      '(metrics.csv, tb/); remove this key']),
    (['--config', DIGITS, 'checkpoint.dirpath=/tmp'],
     ["override 'checkpoint.dirpath=/tmp': checkpoint.dirpath: checkpoints go to save/<name>/ckpt; "
      'choose the name with --name']),
    (['--config', DIGITS, 'train_wrapper.args.scheduler_spec.name=ReduceLROnPlateau',
      'train_wrapper.args.scheduler_spec.args={}'],
     ["configs/digits.yaml: train_wrapper.args.scheduler_spec.monitor: "
      'ReduceLROnPlateau needs the metric it watches, e.g. monitor: val/loss']),
    (['--config', DIGITS, 'train_wrapper.args.optim_spec=null'],
     ["override 'train_wrapper.args.optim_spec=null': train_wrapper.args.optim_spec: expected an optimizer spec, "
      'got null']),
    (['--config', DIGITS, 'data_module.args.batch_size=1.5'],
     ["override 'data_module.args.batch_size=1.5': data_module.args.batch_size: expected int, got float 1.5"]),
    (['--config', DIGITS, 'seed=-1'], ["override 'seed=-1': seed: expected a non-negative integer, got -1"]),
    (['--config', DIGITS, 'seed.x=1'], ["override 'seed.x=1': seed is not a section (it holds 0)"]),
    (['--config', DIGITS, 'oops'], ["override 'oops': expected key.path=value, e.g. trainer_params.max_epochs=3"]),
    (['--config', DIGITS, 'trainer_params.accelerator=gpux'],
     ["configs/digits.yaml: trainer_params: building pl.Trainer failed: ValueError: You selected an invalid "
      "accelerator name: `accelerator='gpux'`. Available names are: "]),
    (['--config', DIGITS, '--name', '../escape'],
     ['--name \'../escape\': an experiment name may only use letters, digits, and . _ - (no path separators, no "..")']),
    (['--config', DIGITS, '--name', '/abs'],
     ['--name \'/abs\': an experiment name may only use letters, digits, and . _ - (no path separators, no "..")']),
    (['--config', DIGITS, '--gpu', '0'],
     ['--gpu 0: no CUDA device is available on this machine; leave out --gpu or pass --gpu cpu to train on the CPU']),
    (['--config', DIGITS, '--gpu', '1,x'],
     ["--gpu '1,x': expected distinct CUDA device indices such as 0 or 1,2, or 'cpu'"]),
    (['--resume', 'save/none'], ['--resume save/none: no such experiment folder or checkpoint file']),
    ([], ['--config is required (or --resume an experiment folder); e.g. --config configs/digits.yaml']),
    (['--list', 'modls'], ["--list modls: no such registry (did you mean 'models'?); registries: datasets, "
                           'data_modules, models, losses, wrappers, callbacks, optimizers, schedulers, metrics']),
]


@pytest.mark.parametrize('args, lines', CLI_ERRORS, ids=[' '.join(a[-1:]) or 'no-args' for a, _ in CLI_ERRORS])
def test_bad_input_exits_2_with_one_line_per_problem_and_creates_nothing(
        args: list[str], lines: list[str], save_root: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert run_pl(save_root, *args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(lines)
    for got, expected in zip(err, lines):
        assert got.startswith(f'error: {expected}')
        assert 'Traceback' not in got
    assert not save_root.exists()


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
