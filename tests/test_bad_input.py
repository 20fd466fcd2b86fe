"""Bad input, both entry points: one line per problem naming the file, key or flag; exit status
2; no traceback; nothing created in save/ and no existing folder changed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DIGITS, ROOT, RUNNERS, snapshot
from lightyaml.config.loading import load_config
from utils import DATASETS, METRICS, MODELS, ConfigError

NAME_RULE = 'an experiment name may only use letters, digits, and . _ - = (no path separators, no "..")'
FILES = {   # bad config files written to {tmp}
    'syntax.yaml': 'a: [1, 2\n', 'empty.yaml': '', 'list.yaml': '- 1\n', 'scalar.yaml': '42\n',
    'dup.yaml': 'seed: 1\nseed: 2\n', 'evil.yaml': 'seed: !!python/object/apply:os.system ["touch {tmp}/pwned"]\n',
    'cycle.yaml': 'extends: cycle.yaml\n', 'orphan.yaml': 'extends: missing.yaml\n',
    'partial.yaml': f'extends: {DIGITS}\n', 'nowrapper.yaml': 'data_module: {name: default}\n',
    'notckpt.ckpt': 'not a checkpoint\n', 'number.yaml': f'extends: {DIGITS}\n0: x\n',
}
o = "override '{}': "   # how an override is named in a message

# (arguments, the error line for train_pl.py, for train.py if it differs)
CASES = [
    (['--config', 'configs/nope.yaml'], 'configs/nope.yaml: config file not found'),
    (['--config', '{tmp}/syntax.yaml'], "{tmp}/syntax.yaml:2:1: invalid YAML: expected ',' or ']', but got "
                                        "'<stream end>'"),
    (['--config', '{tmp}/empty.yaml'], '{tmp}/empty.yaml: the config file is empty'),
    (['--config', '{tmp}/list.yaml'], '{tmp}/list.yaml: a config must be a mapping of sections, not a list'),
    (['--config', '{tmp}/scalar.yaml'], '{tmp}/scalar.yaml: a config must be a mapping of sections, not a int'),
    (['--config', '{tmp}/dup.yaml'], "{tmp}/dup.yaml:2:1: invalid YAML: duplicate key 'seed'"),
    (['--config', '{tmp}/evil.yaml'], '{tmp}/evil.yaml:1:7: invalid YAML: could not determine a constructor for the '
                                      "tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    (['--config', '{tmp}/cycle.yaml'], '{tmp}/cycle.yaml: extends: circular: {tmp}/cycle.yaml -> {tmp}/cycle.yaml'),
    (['--config', '{tmp}/orphan.yaml'], '{tmp}/missing.yaml: config file not found'),
    (['--config', '{tmp}/nowrapper.yaml'], "{tmp}/nowrapper.yaml: missing section 'train_wrapper'"),
    (['--config', '{tmp}/number.yaml'], '{tmp}/number.yaml: 0: unknown section; sections: seed, threads, data_module, '
                                        'train_wrapper, trainer_params, checkpoint, callbacks, loggers, predict, '
                                        'init_from, scale_lr'),
    (['--config', DIGITS, 'trainer_paramz.max_epochs=1'],
     o.format('trainer_paramz.max_epochs=1') + "trainer_paramz: unknown section (did you mean 'trainer_params'?); "
     'sections: seed, threads, data_module, train_wrapper, trainer_params, checkpoint, callbacks, loggers, predict, '
     'init_from, scale_lr'),
    (['--config', DIGITS, 'train_wrapper.args.model_spec.name=mlpp'],
     o.format('train_wrapper.args.model_spec.name=mlpp') + 'train_wrapper.args.model_spec.name: unknown model '
     "'mlpp' (did you mean 'mlp'?); registered: {models}"),
    (['--config', DIGITS, 'train_wrapper.args.loss_spec.name=cee'],
     o.format('train_wrapper.args.loss_spec.name=cee') + "train_wrapper.args.loss_spec.name: unknown loss 'cee' "
     "(did you mean 'ce'?); registered: ce, mse"),
    (['--config', DIGITS, 'train_wrapper.args.optim_spec.args.lrr=0.1'],
     o.format('train_wrapper.args.optim_spec.args.lrr=0.1') + "train_wrapper.args.optim_spec.args.lrr: optimizer "
     "'Adam' does not take 'lrr' (did you mean 'lr'?)"),
    (['--config', DIGITS, 'train_wrapper.args.scheduler_spec.name=CosineAnnealing'],
     o.format('train_wrapper.args.scheduler_spec.name=CosineAnnealing') + 'train_wrapper.args.scheduler_spec.name: '
     "unknown scheduler 'CosineAnnealing' (did you mean 'CosineAnnealingLR' or 'CosineAnnealingWarmRestarts'?); "
     'registered: ChainedScheduler, '),
    (['--config', DIGITS, 'train_wrapper.args.metrics.acc.name=Acuracy'],
     o.format('train_wrapper.args.metrics.acc.name=Acuracy') + "train_wrapper.args.metrics.acc.name: unknown metric "
     "'Acuracy' (did you mean 'Accuracy'?); registered: {metrics}"),
    (['--config', DIGITS, 'data_module.args.train.name=digit'],
     o.format('data_module.args.train.name=digit') + "data_module.args.train.name: unknown dataset 'digit' "
     "(did you mean 'digits'?); registered: {datasets}"),
    (['--config', DIGITS, 'data_module.name=defaults'],
     o.format('data_module.name=defaults') + "data_module.name: unknown data module 'defaults' "
     "(did you mean 'default'?); registered: default"),
    (['--config', DIGITS, 'data_module.args.train.args.splt=val'],
     o.format('data_module.args.train.args.splt=val') + "data_module.args.train.args.splt: dataset 'digits' does "
     "not take 'splt' (did you mean 'split'?)"),
    (['--config', DIGITS, 'train_wrapper.args.model_spec.args.in_dim=big'],
     o.format('train_wrapper.args.model_spec.args.in_dim=big') + 'train_wrapper.args.model_spec.args.in_dim: '
     "expected int, got str 'big'"),
    (['--config', DIGITS, 'data_module.args.batch_size=1.5'],
     o.format('data_module.args.batch_size=1.5') + 'data_module.args.batch_size: expected int, got float 1.5'),
    (['--config', DIGITS, 'train_wrapper.args.model_spec=mlp'],
     o.format('train_wrapper.args.model_spec=mlp') + "train_wrapper.args.model_spec: expected a model spec "
     "{name: ..., args: {...}}, got str 'mlp'"),
    (['--config', DIGITS, 'train_wrapper.args.scheduler_spec.interval=weekly'],
     o.format('train_wrapper.args.scheduler_spec.interval=weekly') + 'train_wrapper.args.scheduler_spec.interval: '
     "expected 'epoch' or 'step', got 'weekly'"),
    (['--config', DIGITS, 'seed=abc'],
     o.format('seed=abc') + "seed: expected an integer from 0 to 4294967295, got 'abc'"),
    (['--config', DIGITS, 'trainer_params.max_epochs=abc'],
     o.format('trainer_params.max_epochs=abc') + "trainer_params.max_epochs: expected int, got str 'abc'"),
    (['--config', DIGITS, 'trainer_params.max_epoch=3'],
     o.format('trainer_params.max_epoch=3') + "trainer_params.max_epoch: pl.Trainer does not take 'max_epoch' "
     "(did you mean 'max_epochs' or 'min_epochs' or 'max_steps'?)",
     o.format('trainer_params.max_epoch=3') + "trainer_params.max_epoch: train.py (use train_pl.py for other Trainer "
     "arguments) does not take 'max_epoch' (did you mean 'max_epochs' or 'max_steps'?)"),
    (['--config', DIGITS, 'trainer_params.precision=17'],
     o.format('trainer_params.precision=17') + "trainer_params.precision: expected one of 64, 32, 16, ",
     o.format('trainer_params.precision=17') + "trainer_params.precision: expected one of '32-true', 32, '32', "
     "'bf16-mixed', 'bf16', '16-mixed', 16, '16', '64-true', 64, '64', 'bf16-true', '16-true', got int 17"),
    (['--config', DIGITS, 'checkpoint.mode=maximum'],
     o.format('checkpoint.mode=maximum') + 'checkpoint.mode: building ModelCheckpoint failed: '
     'MisconfigurationException: `mode` can be min, max but got maximum',
     o.format('checkpoint.mode=maximum') + "checkpoint.mode: expected one of 'min', 'max', got str 'maximum'"),
    (['--config', DIGITS, 'oops'], "override 'oops': expected key.path=value, e.g. trainer_params.max_epochs=3"),
    (['--config', DIGITS, '=3'], "override '=3': expected key.path=value, e.g. trainer_params.max_epochs=3"),
    (['--config', DIGITS, 'seed.x=1'], "override 'seed.x=1': seed is not a section (it holds 0)"),
    (['--config', DIGITS, 'seed=[1,'], "override 'seed=[1,':1:4: invalid YAML: expected the node content, but "
                                       "found '<stream end>'"),
    (['--config', DIGITS, 'train_wrapper.args.model_spec.args.hidden.3=1'],
     "override 'train_wrapper.args.model_spec.args.hidden.3=1': train_wrapper.args.model_spec.args.hidden.3: "
     'no item 3 in a list of 1'),
    (['--resume', 'save/none'], '--resume save/none: no such experiment folder or checkpoint file'),
    (['--resume', '{tmp}'], '--resume {tmp}: no config.yaml in this folder; is it an experiment folder?'),
    (['--resume', '{tmp}/notckpt.ckpt'], '--resume {tmp}/notckpt.ckpt: cannot read the checkpoint {tmp}/notckpt.ckpt '),
    (['--config', DIGITS, '--resume', '{save}/old'], '--config with --resume {save}/old: a resumed run uses its own '
                                                     'config.yaml (give changes as overrides)'),
    (['--config', DIGITS, '--workers', '2'], '--workers: only with --search or --sweep'),
    (['--resume', '{save}/old', '--auto-resume'], '--auto-resume: give --config (and --name), without --resume or '
                                                  '--overwrite'),
    (['--config', DIGITS, '--name', 'old', '--auto-resume', 'seed=1'],
     '--auto-resume: {save}/old was run with another config (seed: 0 then, 1 now'),
    (['--config', DIGITS, '--init-from', 'save/none'], '--init-from save/none: no such experiment folder or '
                                                       'checkpoint file'),
    (['--config', DIGITS, '--name', '../escape'], f"--name '../escape': {NAME_RULE}"),
    (['--config', DIGITS, '--name', 'a/b'], f"--name 'a/b': {NAME_RULE}"),
    (['--config', DIGITS, '--name', '/abs'], f"--name '/abs': {NAME_RULE}"),
    (['--config', DIGITS, '--name', 'a\\b'], f"--name 'a\\\\b': {NAME_RULE}"),
    (['--config', DIGITS, '--tag', 'x/..'], f"--tag 'x/..': {NAME_RULE}"),
    (['--config', DIGITS, '--name', 'old'], '--name: experiment folder {save}/old already exists; continue it with '
                                            '--resume {save}/old, choose another --name or --tag, or pass --overwrite '
                                            'to move the old folder aside (nothing is deleted)'),
    (['--config', DIGITS, '--gpu', '0'], '--gpu 0: no CUDA device is available on this machine; leave out --gpu or '
                                         'pass --gpu cpu to train on the CPU'),
    (['--config', DIGITS, '--gpu', '1,x'], "--gpu '1,x': expected distinct CUDA device indices such as 0 or 1,2, or "
                                           "'cpu'"),
    ([], '--config is required (or --resume an experiment folder); e.g. --config configs/digits.yaml'),
]


@pytest.fixture(scope='module')
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp('bad')
    for name, text in FILES.items():
        (folder / name).write_text(text.replace('{tmp}', str(folder)))
    return folder


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('case', CASES, ids=[' '.join(c[0][-2:]) or 'no-args' for c in CASES])
def test_bad_input(entry: str, case: tuple, tmp: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    save = tmp_path / 'save'
    (save / 'old' / 'ckpt').mkdir(parents=True)
    (save / 'old' / 'config.yaml').write_text((ROOT / DIGITS).read_text())
    (save / 'old' / 'log.txt').write_text('epoch 1/1 ...\n')
    before = snapshot(save)

    def fill(text: str) -> str:
        return (text.replace('{tmp}', str(tmp)).replace('{save}', str(save))
                .replace('{models}', MODELS._registered()).replace('{metrics}', ', '.join(METRICS.names()))
                .replace('{datasets}', ', '.join(DATASETS.names())))
    args, expected = [fill(a) for a in case[0]], fill(case[2] if entry == 'train.py' and len(case) > 2 else case[1])
    assert RUNNERS[entry](save, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {expected}'), err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert snapshot(save) == before and sorted(p.name for p in save.iterdir()) == ['old']
    assert not (tmp / 'pwned').exists()


CIFAR = str(ROOT / 'configs' / 'cifar10.yaml')
NO_GPU = 'asks for a GPU, and this machine has none; to train on the CPU add'
GPU_CASES = [   # (arguments, the error line)
    (['--config', CIFAR], f"configs/cifar10.yaml: trainer_params.accelerator: 'gpu' {NO_GPU} --gpu cpu "
                          f'data_module.args.device=null'),
    (['--config', CIFAR, '--gpu', 'cpu'], f"configs/cifar10.yaml: data_module.args.device: 'cuda' {NO_GPU} "
                                          f'data_module.args.device=null'),
    (['--config', CIFAR, '--sweep', 'seed=0,1'], f"configs/cifar10.yaml: trainer_params.accelerator: 'gpu' {NO_GPU} "
                                                 f'--gpu cpu data_module.args.device=null'),
    (['--config', DIGITS, 'trainer_params.accelerator=cuda'],
     f"override 'trainer_params.accelerator=cuda': trainer_params.accelerator: 'cuda' {NO_GPU} --gpu cpu"),
]


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('case', GPU_CASES, ids=['cifar10', 'cifar10-gpu-cpu', 'sweep', 'override'])
def test_a_config_asking_for_a_gpu_on_a_machine_without_one_names_the_overrides(
        entry: str, case: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before anything is created or built (issue 28: train_pl.py ended in Lightning's 'No supported
    gpu backend found!'); on a machine with a GPU too, which the test hides."""
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.chdir(ROOT)
    assert RUNNERS[entry](tmp_path / 'save', *case[0]) == 2
    assert capsys.readouterr().err == f'error: {case[1]}\n'
    assert not (tmp_path / 'save').exists()


def test_the_table_covers_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


def validate_both(cfg) -> None:
    import train
    import train_pl
    for validate in (train_pl.validate, train.validate):
        try:
            validate(cfg)
        except ConfigError:
            pass


# Keys the config really uses, so random documents reach deep into validation.
section_names = st.sampled_from(['seed', 'data_module', 'train_wrapper', 'trainer_params', 'checkpoint',
                                 'callbacks', 'name', 'args', 'extends', 'model_spec', 'loss_spec', 'optim_spec',
                                 'scheduler_spec', 'metrics', 'max_epochs', 'precision', 'train', 'val',
                                 'batch_size', 'interval', 'warmup', 'monitor', 'devices'])
names = st.sampled_from(['base', 'default', 'mlp', 'digits', 'ce', 'Adam', 'StepLR', 'ReduceLROnPlateau',
                         'Accuracy', 'gan'])
# YAML keys need not be strings
plain_keys = st.integers(-1, 2) | st.booleans() | st.none() | st.floats(allow_nan=False)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8) | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(section_names | st.text(max_size=6) | plain_keys,
                                                                 inner, max_size=4),
    max_leaves=16)


def dump(node: object) -> str:
    return yaml.safe_dump(node, sort_keys=False)  # keys of mixed types do not sort


def key_paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested config, e.g. ('train_wrapper', 'args', 'model_spec')."""
    if not isinstance(node, dict):
        return []
    return [p for k, v in node.items() for p in [prefix + (k,)] + key_paths(v, prefix + (k,))]


def mutated(edits: list[tuple[tuple, object]]) -> str:
    """The digits config with values at some key paths replaced (or removed, for a None path)."""
    cfg = yaml.safe_load((ROOT / DIGITS).read_text())
    for path, value in edits:
        node = cfg
        for k in path[:-1]:
            node = node[k] if isinstance(node, dict) and isinstance(node.get(k), dict) else {}
        if value == '<delete>':
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return dump(cfg)


DIGITS_PATHS = key_paths(yaml.safe_load((ROOT / DIGITS).read_text()))
documents = st.one_of(
    st.text(max_size=60),
    json_like.map(dump),
    st.dictionaries(section_names | plain_keys, json_like, max_size=6).map(dump),
    st.lists(st.tuples(st.sampled_from(DIGITS_PATHS), json_like | st.just('<delete>')), min_size=1,
             max_size=4).map(mutated))
overrides = st.lists(st.text(alphabet='abcdefghijklmnoprstuvwxyz_.=[]{}:, -0123456789', max_size=40), max_size=3)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents, extra=overrides)
def test_random_documents_and_overrides_raise_only_config_errors(document: str, extra: list[str],
                                                                tmp_path: Path) -> None:
    path = tmp_path / 'random.yaml'
    path.write_text(document)
    for config, args in ((path, []), (ROOT / DIGITS, extra)):
        try:
            cfg = load_config(config, args)
        except ConfigError:
            continue
        validate_both(cfg)
