"""Code written the usual Lightning and PyTorch way, registered and named in YAML, just works:
a LightningDataModule that builds its data in setup(), a LightningModule with its own optimizer
and metric names, lazy and parameter-free models, torchvision models by name, and mistakes in a
user's module file reported with the file and line."""
from __future__ import annotations

import csv
import inspect
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from conftest import QUIET, ROOT, registering, run_pl
from utils import DATA_MODULES, WRAPPERS

PNG = b'\x89PNG\r\n\x1a\n'


class DigitsLightningData(pl.LightningDataModule):
    """Lightning's BoringDataModule pattern on the bundled digits: nothing is built before setup()."""

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.prepared = False

    def prepare_data(self) -> None:
        self.prepared = True   # where a download would go (rank 0 only)

    def setup(self, stage: str) -> None:
        from datasets.digits import Digits
        if stage == 'fit':
            self.train_set = Digits('train')
        if stage in ('fit', 'validate'):
            self.val_set = Digits('val')
        if stage in ('test', 'predict'):
            self.test_set = Digits('test')

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class UsualModule(pl.LightningModule):
    """A LightningModule as the Lightning docs write one: its own optimizer, `self.log` with
    names of its own (no `stage/metric`), or nothing logged at all."""

    def __init__(self, hidden: int = 64, lr: float = 1e-2, log_metrics: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch['image'])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch), batch['label'])
        if self.hparams.log_metrics:
            self.log('train_loss', loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        if self.hparams.log_metrics:
            self.log('val_acc', (logits.argmax(1) == batch['label']).float().mean())
            self.log('valid/loss', F.cross_entropy(logits, batch['label']))
            self.log('lr', self.trainer.optimizers[0].param_groups[0]['lr'])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log('test_acc', (self(batch).argmax(1) == batch['label']).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@pytest.fixture
def registered() -> Iterator[None]:
    """The two classes above registered for the test, and unregistered after it."""
    with registering((DATA_MODULES, 'digits_lightning', DigitsLightningData), (WRAPPERS, 'usual', UsualModule)):
        yield


def write_config(path: Path, **args: object) -> str:
    """A config for the two classes above, written to `path`; `args` go to the LightningModule."""
    cfg = {'seed': 0, 'data_module': {'name': 'digits_lightning', 'args': {'batch_size': 32}},
           'train_wrapper': {'name': 'usual', 'args': args},
           'trainer_params': {'max_epochs': 3, 'accelerator': 'cpu', 'enable_model_summary': False},
           'checkpoint': {'monitor': 'val_acc', 'mode': 'max'}}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_lightning_data_module_and_a_usual_module_fit_resume_test_and_predict(
        registered: None, save_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'usual.yaml')
    assert run_pl(save_root, '--config', config, '--name', 'usual', 'trainer_params.max_epochs=2') == 0
    exp = save_root / 'usual'
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    # The epoch line understands `train_loss`, `val_acc`, `valid/loss` and an unstaged `lr`.
    lines = [line for line in (exp / 'log.txt').read_text().splitlines() if line.startswith('epoch ')]
    assert [line.split()[1] for line in lines] == ['1/2', '2/2', '3/3']
    for line in lines:
        assert ('  train: loss ' in line and '  val: acc ' in line and ' loss ' in line.split('val: ')[1]
                and '  other: lr 0.0100  ' in line), line
    final_acc = float(lines[-1].split('val: acc ')[1].split()[0])
    assert final_acc >= 0.9
    with open(exp / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert {'train_loss', 'val_acc', 'valid/loss', 'lr'} <= set(rows[0])
    assert [int(r['epoch']) for r in rows if r['val_acc']] == [0, 1, 2]
    result = yaml.safe_load((exp / 'result.yaml').read_text())
    assert result['final']['val_acc'] == pytest.approx(final_acc, abs=1e-4)
    assert result['best']['monitor'] == 'val_acc' and result['best']['value'] >= final_acc - 1e-4
    from lightyaml.run.results import read_curves
    curves = read_curves(exp)
    assert set(curves) == {'loss', 'acc', 'lr'} and set(curves['loss']) == {'train', 'val'}
    assert [e for e, _ in curves['acc']['val']] == [0, 1, 2]
    assert (exp / 'curves.png').read_bytes().startswith(PNG)
    # --test and --predict go through the module's own setup('test') / predict_dataloader().
    assert run_pl(save_root, '--test', str(exp)) == 0
    tests = yaml.safe_load((exp / 'test.yaml').read_text())
    assert tests[result['best']['checkpoint']]['test_acc'] >= 0.85
    # Nothing in the config says it classifies (its loss is in its code): predict.classify says so.
    assert run_pl(save_root, '--predict', str(exp), 'predict.classify=true') == 0
    with open(exp / 'predictions.csv') as f:
        predictions = list(csv.DictReader(f))
    from datasets.digits import Digits
    labels = Digits('test').tensors['label'].tolist()
    assert len(predictions) == len(labels)
    assert sum(int(r['pred']) == y for r, y in zip(predictions, labels)) / len(labels) >= 0.85


def test_train_py_refuses_a_lightning_data_module_by_name(registered: None, save_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from conftest import run_py
    config = tmp_path / 'x.yaml'
    config.write_text('data_module: {name: digits_lightning}\ntrain_wrapper: {name: base, args: {model_spec: '
                      '{name: mlp}, loss_spec: {name: ce}, optim_spec: {name: Adam}}}\n')
    assert run_py(save_root, '--config', str(config)) == 2
    shown = str(config.relative_to(Path.cwd())) if config.is_relative_to(Path.cwd()) else str(config)
    assert capsys.readouterr().err == (
        f"error: {shown}: data_module.name: 'digits_lightning' is a LightningDataModule, whose setup() Lightning "
        "calls; use train_pl.py for it\n")
    assert not save_root.exists()


def test_a_module_that_logs_nothing_finishes_cleanly(registered: None, save_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / 'silent.yaml', log_metrics=False)
    assert run_pl(save_root, '--config', config, '--name', 'silent', 'checkpoint.monitor=null',
                  'trainer_params.max_epochs=1') == 0
    assert capsys.readouterr().err == ''
    exp = save_root / 'silent'
    result = yaml.safe_load((exp / 'result.yaml').read_text())
    assert result == {'final': {}, 'best': {'monitor': None, 'value': None, 'checkpoint': 'epoch=0-step=40.ckpt'}}
    log = (exp / 'log.txt').read_text().splitlines()
    assert log[-1] == f'done -> {exp} (ckpt/epoch=0-step=40.ckpt, result.yaml)' and log[-2].startswith('epoch 1/1  ')
    assert not (exp / 'curves.png').exists()   # nothing to draw
    assert run_pl(save_root, '--plot', str(exp), '--out', str(tmp_path / 'empty.png')) == 0
    assert (tmp_path / 'empty.png').read_bytes().startswith(PNG)


@pytest.mark.slow
def test_a_lightning_data_module_in_a_users_file_trains_with_ddp(tmp_path: Path) -> None:
    # A copy of the project with the data module dropped into datasets/ as a user would; DDP
    # starts fresh processes, which find it by the registry's scan of the folder.
    copy = tmp_path / 'project'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    source = inspect.getsource(DigitsLightningData)
    (copy / 'datasets' / 'digits_lightning.py').write_text(
        'import pytorch_lightning as pl\nfrom torch.utils.data import DataLoader\n\n'
        'from utils import DATA_MODULES\n\n\n'
        f"@DATA_MODULES.register('digits_lightning')\n{source}")
    (copy / 'models' / 'wrappers' / 'usual.py').write_text(
        'import pytorch_lightning as pl\nimport torch\nfrom torch import nn\nfrom torch.nn import functional as F\n\n'
        f"from models.wrappers import register\n\n\n@register('usual')\n{inspect.getsource(UsualModule)}")
    config = write_config(tmp_path / 'ddp.yaml')
    done = subprocess.run([sys.executable, 'train_pl.py', '--config', config, '--name', 'ddp',
                           '--save-root', str(tmp_path / 'save'), 'trainer_params.max_epochs=1',
                           'trainer_params.devices=2', 'trainer_params.strategy=ddp', *QUIET],
                          cwd=copy, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / 'save' / 'ddp' / 'log.txt').read_text().splitlines()
    epochs = [line for line in log if line.startswith('epoch ')]
    assert len(epochs) == 1 and float(epochs[0].split('val: acc ')[1].split()[0]) >= 0.8
    assert sum(line.startswith('command: ') for line in log) == 1


# ----------------------------------------------------------------------- mistakes in a user's file

MISTAKES = {
    'syntax': ("from models import register\n\n\n@register('broken')\nclass Broken(\n    pass\n",
               "mine.py:5: SyntaxError: '(' was never closed"),
    'import': ('import torch\nimport no_such_package\n',
               "mine.py:2: ModuleNotFoundError: No module named 'no_such_package'"),
    'duplicate': ("from torch import nn\nfrom my_models import register\n\n\n@register('mlp')\n"
                  "class MyMLP(nn.Module):\n    pass\n",
                  "model 'mlp' is registered twice: {folder}/mine.py:5 (my_models.mine.MyMLP) and "
                  "{folder}/mlp.py:4 (my_models.mlp.MLP)"),
}


@pytest.mark.parametrize('mistake', MISTAKES)
def test_a_mistake_in_a_users_module_file_names_the_file_and_line(mistake: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from utils import ModuleFileError
    source, message = MISTAKES[mistake]
    folder = tmp_path / 'my_models'   # a package of its own, with a registry over it, as models/ has
    folder.mkdir()
    (folder / '__init__.py').write_text("from utils import Registry\n\nMODELS = Registry('model', 'my_models')\n"
                                        'register = MODELS.register\n')
    (folder / 'mlp.py').write_text("from my_models import register\n\n\n@register('mlp')\nclass MLP:\n    pass\n")
    (folder / 'mine.py').write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_models
    try:
        for _ in range(2):   # asked again, the same error (not a registry quietly missing names)
            with pytest.raises(ModuleFileError) as error:
                my_models.MODELS.names()
            expected = message.format(folder=folder) if mistake == 'duplicate' else f'{folder}/{message}'
            assert str(error.value) == expected
    finally:
        for name in [m for m in sys.modules if m.split('.')[0] == 'my_models']:
            del sys.modules[name]


@pytest.mark.parametrize('command', [['train_pl.py', '--config', 'configs/digits.yaml', *QUIET],
                                     ['train_pl.py', '--list'], ['train.py', '--list', 'models']])
def test_a_syntax_error_in_models_stops_the_run_before_anything_is_created(command: list[str], tmp_path: Path) -> None:
    """A run, and `--list` (which reads names from the source without importing it), give the same line."""
    copy = tmp_path / 'project'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    (copy / 'models' / 'mine.py').write_text(MISTAKES['syntax'][0])
    done = subprocess.run([sys.executable, *command], cwd=copy, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "error: models/mine.py:5: SyntaxError: '(' was never closed\n")
    assert not (copy / 'save').exists()


# ------------------------------------------------------------- lazy and parameter-free models

class LazyMLP(nn.Module):
    """Input sizes left to the first batch (nn.LazyLinear)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.LazyLinear(10))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch['image'])


class NearestMean(nn.Module):
    """Buffers only: class means accumulated while training, logits = -squared distance to them."""

    def __init__(self, in_dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.register_buffer('sums', torch.zeros(classes, in_dim))
        self.register_buffer('counts', torch.zeros(classes))

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch['image'].flatten(1)
        if self.training:
            self.sums.index_add_(0, batch['label'], x)
            self.counts.index_add_(0, batch['label'], torch.ones(len(x)))
        means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
        return -torch.cdist(x, means) ** 2


@pytest.fixture
def models_registered() -> Iterator[None]:
    """The lazy and the buffers-only model registered for the test, and unregistered after it."""
    from utils import MODELS
    with registering((MODELS, 'lazy_mlp', LazyMLP), (MODELS, 'nearest_mean', NearestMean)):
        yield


def val_acc(exp: Path) -> float:
    """The validation accuracy on the last epoch line of an experiment's log.txt."""
    return float([line for line in (exp / 'log.txt').read_text().splitlines()
                  if line.startswith('epoch ')][-1].split('val: acc ')[1].split()[0])


@pytest.mark.parametrize('entry', ['train_pl.py', 'train.py'])
def test_a_lazy_model_trains_resumes_and_starts_others(entry: str, models_registered: None, save_root: Path) -> None:
    from conftest import DIGITS, RUNNERS
    run = RUNNERS[entry]
    model = 'train_wrapper.args.model_spec={name: lazy_mlp, args: {hidden: 32}}'
    assert run(save_root, '--config', DIGITS, '--name', 'lazy', model, 'trainer_params.max_epochs=2') == 0
    exp = save_root / 'lazy'
    # Materialized by the first batch before the summary: 64*32 + 32 + 32*10 + 10 parameters.
    assert (exp / 'log.txt').read_text().splitlines()[1] == 'parameters: 2,410 total (model 2,410)'
    assert run(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    assert val_acc(exp) >= 0.9
    state = torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['state_dict']['model.net.1.weight'].shape == (32, 64)
    # --init-from loads into a fresh lazy model: it takes the checkpoint's shapes and weights.
    assert run(save_root, '--config', DIGITS, '--name', 'tuned', model, '--init-from', str(exp),
               'trainer_params.max_epochs=1', 'train_wrapper.args.optim_spec.args.lr=0') == 0
    assert val_acc(save_root / 'tuned') == pytest.approx(val_acc(exp), abs=1e-4)
    assert run(save_root, '--test', str(exp)) == 0


@pytest.mark.parametrize('entry', ['train_pl.py', 'train.py'])
def test_a_model_with_buffers_only_trains_checkpoints_and_starts_others(entry: str, models_registered: None,
                                                                         save_root: Path) -> None:
    from conftest import DIGITS, RUNNERS
    run = RUNNERS[entry]
    model = 'train_wrapper.args.model_spec={name: nearest_mean}'
    assert run(save_root, '--config', DIGITS, '--name', 'means', model, 'trainer_params.max_epochs=1') == 0
    exp = save_root / 'means'
    assert (exp / 'log.txt').read_text().splitlines()[1] == 'parameters: 0 total'
    assert val_acc(exp) >= 0.85   # nearest class mean on the digits
    counts = torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']['model.counts']
    from datasets.digits import Digits
    assert counts.sum() == len(Digits('train'))
    assert run(save_root, '--config', DIGITS, '--name', 'again', model, '--init-from', str(exp),
               'trainer_params.max_epochs=1') == 0
    again = torch.load(save_root / 'again' / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']['model.counts']
    assert torch.equal(again, 2 * counts)   # started from the first run's sums, then one more epoch


def test_the_summary_counts_models_without_parameters_and_uninitialized_lazy_ones() -> None:
    from lightyaml.run.metrics_files import model_summary
    from lightyaml.train.lazy import has_uninitialized, materialize
    assert model_summary(nn.Sequential(nn.Flatten(), nn.ReLU())) == 'parameters: 0 total'
    lazy = LazyMLP()
    assert model_summary(lazy) == 'parameters: 0 total, and 4 lazy ones not yet initialized'
    assert materialize(lazy, [{'image': torch.rand(2, 1, 8, 8)}]) and not has_uninitialized(lazy)
    assert model_summary(lazy) == 'parameters: 2,410 total (net 2,410)'


# ------------------------------------------------------------------- regression on real data

def test_diabetes_regression_reaches_r2_above_the_bar(save_root: Path) -> None:
    from conftest import run_py
    config = str(ROOT / 'configs' / 'diabetes.yaml')
    assert run_py(save_root, '--config', config) == 0
    exp = save_root / 'diabetes'
    result = yaml.safe_load((exp / 'result.yaml').read_text())
    # Measured 2026-12-02: best val/r2 0.41 (scikit-learn's LinearRegression: 0.43 on this split).
    assert result['best']['monitor'] == 'val/r2' and result['best']['value'] >= 0.35
    assert 0 < result['final']['val/mae'] < 0.7   # in standard deviations of the target
    assert run_pl(save_root, '--test', str(exp)) == 0
    tests = yaml.safe_load((exp / 'test.yaml').read_text())[result['best']['checkpoint']]
    assert tests['test/r2'] >= 0.45   # measured 0.54 (LinearRegression: 0.53)
    from sklearn.datasets import load_diabetes

    from datasets.diabetes import Diabetes, load_diabetes_arrays
    features, target = load_diabetes_arrays()
    assert (features == load_diabetes(scaled=False).data).all() and (target == load_diabetes().target).all()
    assert Diabetes('train').tensors['target'].shape[1:] == (1,)


# --------------------------------------------------------------------- torchvision models by name

def test_a_torchvision_model_by_name_trains_on_grey_digits(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import DIGITS, run_py
    from utils import MODELS, list_registered
    assert ({'torchvision.resnet18', 'torchvision.mobilenet_v3_small'}
            <= set(list_registered(['models'])[8:].split(', ')))
    # The first convolution takes one channel; the 8x8 digits are resized to 32x32 first.
    model = ('train_wrapper.args.model_spec={name: torchvision.resnet18, '
             'args: {num_classes: 10, in_channels: 1, input_size: 32}}')
    assert run_py(save_root, '--config', DIGITS, '--name', 'tv', model, 'trainer_params.max_epochs=1',
                  'trainer_params.enable_model_summary=false') == 0
    log = (save_root / 'tv' / 'log.txt').read_text().splitlines()
    assert log[1] == 'parameters: 11,175,370 total (model 11,175,370)'
    assert val_acc(save_root / 'tv') >= 0.5   # chance is 0.1; measured 0.86 with 1 thread, 0.67 with 2
    net = MODELS.make({'name': 'torchvision.mobilenet_v3_small', 'args': {'num_classes': 3, 'in_channels': 5,
                                                                         'image_key': 'x'}})
    assert net({'x': torch.rand(2, 5, 32, 32)}).shape == (2, 3)
    # Checked against the builder's and the model class's signatures, like any model.
    assert run_py(save_root, '--config', DIGITS, model.replace('num_classes', 'num_clases')) == 2
    assert capsys.readouterr().err.endswith(
        "train_wrapper.args.model_spec.args.num_clases: model 'torchvision.resnet18' does not take 'num_clases' "
        "(did you mean 'num_classes' or 'norm_layer'?)\n")


# ------------------------------------------------------------------------------ coming from torchx

def test_a_torchx_config_is_told_what_lightyaml_calls_things(save_root: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    # torchx's own example config: its data module is named after the data set, its loss `mnist_ce`.
    config = tmp_path / 'torchx.yaml'
    config.write_text('data_module: {name: mnist, args: {root_dir: ./load/mnist, batch_size: 32}}\n'
                      'train_wrapper:\n  name: base\n  args:\n'
                      '    model_spec: {name: resnet18, args: {num_classes: 10}}\n'
                      '    loss_spec: {name: mnist_ce}\n    optim_spec: {name: Adam, args: {lr: 1.e-4}}\n'
                      'trainer_params: {max_epochs: 100}\ncheckpoint: {every_n_epochs: 1}\nseed: 42\n')
    assert run_pl(save_root, '--config', str(config)) == 2
    shown = str(config.relative_to(Path.cwd())) if config.is_relative_to(Path.cwd()) else str(config)
    assert capsys.readouterr().err == (
        f"error: {shown}: data_module.name: unknown data module 'mnist': 'mnist' is a dataset; use data_module: "
        "{name: default, args: {train: {name: mnist, args: {...}}, val: {name: mnist, args: {...}}, batch_size: 32}}\n"
        f"error: {shown}: train_wrapper.args.loss_spec.name: unknown loss 'mnist_ce'; registered: ce, mse\n")
    assert not save_root.exists()
