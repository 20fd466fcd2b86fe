"""Config and model tools: `${...}` references, --print-config, the EMA of the weights, --export."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, ROOT, RUNNERS, run_pl, run_py
from lightyaml.config.loading import load_config, parse_yaml
from utils import ConfigError

MNIST = str(ROOT / 'configs' / 'mnist.yaml')
EMA = 'callbacks=[{name: ema, args: {decay: 0.9, start_step: 15, every_n_steps: 2}}]'


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------ references

def test_references_keep_types_fill_strings_index_lists_follow_chains_and_escape(tmp_path: Path) -> None:
    write(tmp_path / 'base.yaml', 'seed: 7\nsizes: {classes: 10, hidden: [512, 64]}\n')
    child = write(tmp_path / 'child.yaml', '''extends: base.yaml
model: {out: '${sizes.classes}', width: '${sizes.hidden.1}', all: '${sizes}'}
name: run-${seed}-w${model.width}
chain: ${model.out}
price: costs $${dollars} and ${seed}
''')
    cfg = load_config(child, ['sizes.classes=3'])   # references see the merged, overridden values
    assert cfg['model'] == {'out': 3, 'width': 64, 'all': {'classes': 3, 'hidden': [512, 64]}}
    assert type(cfg['model']['out']) is int and cfg['chain'] == 3
    assert cfg['name'] == 'run-7-w64' and cfg['price'] == 'costs ${dollars} and 7'
    assert cfg.references['chain'] == '${model.out}'
    # config.yaml holds the values, the escape written back: it loads as the same config
    from lightyaml.run.experiment_dir import ExperimentDir
    exp = ExperimentDir(tmp_path / 'exp')
    exp.path.mkdir()
    exp.write_config(cfg, ['python', 'train.py'])
    saved = (exp.path / 'config.yaml').read_text()
    assert 'out: 3' in saved and 'costs $${dollars}' in saved and '${seed}' not in saved
    assert load_config(exp.path / 'config.yaml') == cfg


def test_the_shipped_configs_write_each_number_once() -> None:
    digits = load_config(DIGITS)
    args = digits['train_wrapper']['args']
    assert args['model_spec']['args']['out_dim'] == 10
    assert [m['args']['num_classes'] for m in args['metrics'].values()] == [10, 10]
    mnist = load_config(MNIST, ['trainer_params.max_epochs=3', 'data_module.args.num_classes=7'])
    args = mnist['train_wrapper']['args']
    assert args['scheduler_spec']['args']['T_max'] == 3
    assert args['model_spec']['args']['num_classes'] == 7 and args['metrics']['acc']['args']['num_classes'] == 7


@pytest.mark.parametrize('text, message', [
    ('a: ${b}\nb: {c: \'${a}\'}\n', 'c.yaml: b.c: reference cycle: a -> b -> b.c -> a'),
    ('a: {n: 1}\nb: ${a.nn}\n', "c.yaml: b: ${a.nn}: no key 'nn' in a (did you mean 'n'?)"),
    ('a: [1]\nb: ${a.3}\n', 'c.yaml: b: ${a.3}: no item 3 in a, a list of 1'),
    ('a: 1\nb: ${a.x}\n', 'c.yaml: b: ${a.x}: a is not a section (it holds 1)'),
    ('a: {n: 1}\nb: x${a}\n', "c.yaml: b: ${a} holds a mapping, which cannot go inside the string 'x${a}'"),
    ('b: x${a\n', "c.yaml: b: 'x${a': unterminated reference (a reference is ${key.path}; write $${ for a literal ${)"),
])
def test_a_bad_reference_is_one_line_naming_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / 'c.yaml', text)
    with pytest.raises(ConfigError) as error:
        load_config('c.yaml')
    assert str(error.value) == message


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_reference_to_a_missing_key_stops_the_run_before_anything_is_created(
        entry: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    override = 'train_wrapper.args.scheduler_spec.args.T_max=${trainer_params.max_epoch}'
    assert RUNNERS[entry](save_root, '--config', DIGITS, override) == 2
    assert capsys.readouterr().err == (f"error: override '{override}': train_wrapper.args.scheduler_spec.args.T_max: "
                                       "${trainer_params.max_epoch}: no key 'max_epoch' in trainer_params "
                                       "(did you mean 'max_epochs'?)\n")
    assert not save_root.exists()


# ---------------------------------------------------------------------------------------- --print-config

# Runs a script as `python SCRIPT ARGS` does, then says whether torch and Lightning were imported.
RUN_AND_LIST_IMPORTS = '''import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit as e:
    status = e.code
print('imported:', 'torch' in sys.modules, 'pytorch_lightning' in sys.modules)
sys.exit(status)
'''


@pytest.mark.parametrize('entry', RUNNERS)
def test_print_config_shows_resolved_values_and_their_origins_and_creates_nothing(entry: str, tmp_path: Path) -> None:
    # A fresh process, to see what --print-config imports: neither torch nor Lightning.
    done = subprocess.run([sys.executable, '-c', RUN_AND_LIST_IMPORTS, entry, '--config', 'configs/mnist.yaml',
                           '--print-config', '--save-root', str(tmp_path / 'save'), 'trainer_params.max_epochs=3'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *printed, imported = done.stdout.splitlines()
    assert imported == 'imported: False False'
    assert not (tmp_path / 'save').exists()
    lines = [tuple(part.strip() for part in line.split('# ')) for line in printed]
    assert ('max_epochs: 3', "override 'trainer_params.max_epochs=3'") in lines
    assert ('T_max: 3', 'configs/mnist.yaml (${trainer_params.max_epochs})') in lines
    assert ('num_classes: 10', 'configs/mnist.yaml (${data_module.args.num_classes})') in lines     # lenet5's
    assert ('num_classes: 10', 'configs/digits.yaml (${data_module.args.num_classes})') in lines    # the metrics'
    assert ('batch_size: 64', 'configs/mnist.yaml') in lines and ('mode: max', 'configs/digits.yaml') in lines
    # The printout is itself a config: the same values as the run would use.
    assert parse_yaml('\n'.join(printed), 'printed') == load_config(ROOT / 'configs' / 'mnist.yaml',
                                                                      ['trainer_params.max_epochs=3'])


def test_print_config_is_the_same_from_train_py_and_for_an_experiment(save_root: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    assert run_py(save_root, '--config', DIGITS, '--print-config', 'seed=3') == 0
    from_train_py = capsys.readouterr().out
    assert run_pl(save_root, '--config', DIGITS, '--print-config', 'seed=3') == 0
    assert capsys.readouterr().out == from_train_py
    assert re.search(r"^seed: 3 +# override 'seed=3'$", from_train_py, re.M)
    assert not save_root.exists()


# ------------------------------------------------------------------------------------------------ EMA

def test_the_ema_rule_copies_until_start_then_averages_every_n_steps() -> None:
    from lightyaml.train.ema import EMA, EMAParams
    layer = torch.nn.Linear(2, 1)
    ema = EMA(layer, EMAParams(decay=0.5, start_step=2, every_n_steps=2))
    expected = layer.weight.detach().clone()
    for step in range(1, 8):
        with torch.no_grad():
            layer.weight.add_(1.0)
        ema.update(step)
        if step <= 2:
            expected = layer.weight.detach().clone()
        elif (step - 2) % 2 == 0:
            expected = expected + 0.5 * (layer.weight.detach() - expected)
        assert torch.equal(ema.weights['weight'], expected), step
    trained = layer.weight.detach().clone()
    with ema.swapped():
        assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.weight, trained)
    with pytest.raises(ValueError, match='decay must be between 0 and 1, got 1.5'):
        EMAParams(decay=1.5)


def checkpoint(exp: Path, name: str = 'last.ckpt') -> dict:
    return torch.load(exp / 'ckpt' / name, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def ema_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two epochs with EMA from each entry point, whole and stopped after one epoch then resumed."""
    save_root, runs = tmp_path_factory.mktemp('ema') / 'save', {}
    for entry, run in RUNNERS.items():
        for name, epochs in (('whole', 2), ('halves', 1)):
            assert run(save_root, '--config', DIGITS, '--name', f'{entry}-{name}', EMA,
                       f'trainer_params.max_epochs={epochs}') == 0
            runs[f'{entry}-{name}'] = save_root / f'{entry}-{name}'
        assert run(save_root, '--resume', str(runs[f'{entry}-halves']), 'trainer_params.max_epochs=2') == 0
    return runs


def test_ema_resumes_exactly_and_is_the_same_from_both_entry_points(ema_runs: dict[str, Path]) -> None:
    reference = checkpoint(ema_runs['train.py-whole'])
    assert reference['global_step'] == 80 and reference['callbacks']['EMA']['decay'] == 0.9
    averaged = reference['callbacks']['EMA']['weights']
    assert not torch.equal(averaged['net.0.weight'], reference['state_dict']['model.net.0.weight'])
    for name in ('train.py-halves', 'train_pl.py-whole', 'train_pl.py-halves'):
        other = checkpoint(ema_runs[name])
        assert all(torch.equal(v, other['state_dict'][k]) for k, v in reference['state_dict'].items()), name
        assert all(torch.equal(v, other['callbacks']['EMA']['weights'][k]) for k, v in averaged.items()), name


def val_loss(task: torch.nn.Module) -> float:
    from utils import DATASETS
    data = DATASETS.make({'name': 'digits', 'args': {'split': 'val'}})
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(task.model.eval()(data.tensors), data.tensors['label']).item()


@pytest.mark.parametrize('entry', RUNNERS)
def test_validation_and_test_use_the_averaged_weights(entry: str, ema_runs: dict[str, Path],
                                                      capsys: pytest.CaptureFixture) -> None:
    from lightyaml.train.task import Task
    exp = ema_runs[f'{entry}-whole']
    state = checkpoint(exp)
    task = Task(**state['hyper_parameters'])
    task.load_state_dict(state['state_dict'])
    trained = val_loss(task)
    task.model.load_state_dict(state['callbacks']['EMA']['weights'])
    with open(exp / 'metrics.csv', newline='') as f:
        logged = [float(row['val/loss']) for row in csv.DictReader(f) if row.get('val/loss')][-1]
    assert logged == pytest.approx(val_loss(task), abs=1e-5)   # the average was validated ...
    assert abs(logged - trained) > 1e-3                          # ... not the trained weights
    best = checkpoint(exp, 'epoch=1-step=80.ckpt')   # saved right after validation: the trained weights are back
    assert all(torch.equal(v, best['state_dict'][k]) for k, v in state['state_dict'].items())
    assert RUNNERS[entry](exp.parent, '--test', str(exp), '--ckpt', 'last') == 0
    assert RUNNERS[entry](exp.parent, '--test', str(exp), '--ckpt', 'last', '--no-ema') == 0
    tests = parse_yaml((exp / 'test.yaml').read_text(), 'test.yaml')
    assert set(tests) == {'last.ckpt (ema)', 'last.ckpt'}
    assert tests['last.ckpt (ema)']['test/loss'] != pytest.approx(tests['last.ckpt']['test/loss'], abs=1e-4)
    assert 'test (last.ckpt, EMA weights): test/acc ' in capsys.readouterr().out


def test_train_py_runs_only_the_ema_and_early_stopping_callbacks(save_root: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    override = ('callbacks=[{name: ema, args: {decay: 2}}, {name: EarlyStopping}, '
                '{name: EarlyStopping, args: {monitor: val/acc, mode: up}}, {name: LearningRateMonitor}]')
    assert run_py(save_root, '--config', DIGITS, override) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: override '{override}': callbacks.0.args.decay: building callback 'ema' failed: ValueError: "
        'decay must be between 0 and 1, got 2',
        f"error: override '{override}': callbacks.1.args: callback 'EarlyStopping' needs 'monitor'",
        f"error: override '{override}': callbacks.2.args.mode: building callback 'EarlyStopping' failed: ValueError: "
        '`mode` can be min, max, got up',
        f"error: override '{override}': callbacks.3: train.py runs only the 'ema' and 'EarlyStopping' callbacks, "
        "not 'LearningRateMonitor'; use train_pl.py for other Lightning callbacks"]
    assert not save_root.exists()


# ---------------------------------------------------------------------------------------------- export

def run_exported(path: Path, fmt: str, images: torch.Tensor) -> torch.Tensor:
    """Outputs of an exported file, read back here with its own runtime."""
    if fmt == 'onnx':
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        return torch.from_numpy(session.run(None, {'input': images.numpy()})[0])
    if fmt == 'torchscript':
        return torch.jit.load(str(path))(images)
    return torch.export.load(str(path)).module()(images)


@pytest.mark.parametrize('fmt, entry', [('onnx', 'train_pl.py'), ('onnx', 'train.py'), ('torchscript', 'train.py'),
                                        ('pt2', 'train_pl.py')])
def test_export_writes_a_model_that_matches_pytorch(fmt: str, entry: str, ema_runs: dict[str, Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    from lightyaml.train.task import Task
    from utils import DATASETS
    exp = ema_runs[f'{entry}-whole']
    assert RUNNERS[entry](exp.parent, '--export', str(exp), '--format', fmt) == 0
    path = exp / 'export' / {'onnx': 'model.onnx', 'torchscript': 'model.torchscript.pt', 'pt2': 'model.pt2'}[fmt]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf'export \(epoch=1-step=80\.ckpt, EMA weights\): {re.escape(str(path))} \({fmt}\): max abs '
                        r'diff (\S+) from PyTorch on batches of 32 and 16 \(tolerance 0\.0001\)', line)
    assert float(line.split('max abs diff ')[1].split()[0]) <= 1e-4
    assert (exp / 'log.txt').read_text().splitlines()[-1] == line
    # Checked again here, on all 270 test images (another batch size): the EMA weights of the best checkpoint.
    state = checkpoint(exp, 'epoch=1-step=80.ckpt')
    task = Task(**state['hyper_parameters'])
    task.model.load_state_dict(state['callbacks']['EMA']['weights'])
    images = DATASETS.make({'name': 'digits', 'args': {'split': 'test'}}).tensors['image']
    with torch.no_grad():
        assert (run_exported(path, fmt, images) - task.model.eval()({'image': images})).abs().max() < 1e-4


def test_export_to_onnx_without_onnxruntime_says_what_to_install(ema_runs: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)   # import onnxruntime now fails
    out = tmp_path / 'm.onnx'
    assert run_py(tmp_path, '--export', str(ema_runs['train.py-halves']), '--out', str(out)) == 2
    assert capsys.readouterr().err == ('error: --format onnx needs onnxruntime, which is not installed: '
                                       'pip install -r requirements-optional.txt\n')
    assert not out.exists()
