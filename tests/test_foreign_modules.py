"""Modules that take objects run as they ship (issue 25, point 4): a `{name, args}` value for a
parameter annotated `nn.Module` is built from its registry, and one for an optimizer, a scheduler
or a `Callable` becomes a partial with the args bound (lightyaml/object_args.py).

The user's files are text in the shapes of lightning-hydra-template (a LightningModule taking
`net: torch.nn.Module`, `optimizer: torch.optim.Optimizer`, `scheduler: torch.optim.lr_scheduler`
and calling `self.hparams.optimizer(params=...)`, a dense net, a data module with
`train_val_test_split`) and of a LightningCLI project (`OptimizerCallable`, `LRSchedulerCallable`),
written here, imported as a user's file is; only `@register` lines are added.
"""
from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import QUIET, ROOT, RUNNERS, imported, registering, run_pl
from utils import DATA_MODULES, MODELS, WRAPPERS

DENSE_NET = '''\
import torch
from torch import nn


class DenseNet(nn.Module):
    """Fully connected layers over the flattened image."""

    def __init__(self, input_size: int = 784, lin1_size: int = 256, lin2_size: int = 256,
                 output_size: int = 10) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_size, lin1_size), nn.BatchNorm1d(lin1_size), nn.ReLU(),
            nn.Linear(lin1_size, lin2_size), nn.BatchNorm1d(lin2_size), nn.ReLU(),
            nn.Linear(lin2_size, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, channels, width, height = x.size()
        return self.model(x.view(batch_size, -1))
'''

LIT_MODULE = '''\
from typing import Any, Dict, Tuple

import torch
from lightning import LightningModule
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy


class DigitsLitModule(LightningModule):
    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler, compile: bool) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.val_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch: Tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        logits = self.forward(x)
        return self.criterion(logits, y), torch.argmax(logits, dim=1), y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, targets)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.net = torch.compile(self.net)

    def configure_optimizers(self) -> Dict[str, Any]:
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        if self.hparams.scheduler is not None:
            scheduler = self.hparams.scheduler(optimizer=optimizer)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch",
                                     "frequency": 1}}
        return {"optimizer": optimizer}
'''

DATA_MODULE = '''\
from typing import Any, Dict, Optional, Tuple

import torch
from lightning import LightningDataModule
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split


class DigitsDataModule(LightningDataModule):
    def __init__(self, data_dir: str = "load/", train_val_test_split: Tuple[int, int, int] = (1297, 250, 250),
                 batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_train: Optional[Dataset] = None
        self.data_val: Optional[Dataset] = None
        self.data_test: Optional[Dataset] = None
        self.batch_size_per_device = batch_size

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        pass   # the digits ship with scikit-learn

    def setup(self, stage: Optional[str] = None) -> None:
        if self.trainer is not None:
            if self.hparams.batch_size % self.trainer.world_size != 0:
                raise RuntimeError("Batch size is not divisible by the number of devices.")
            self.batch_size_per_device = self.hparams.batch_size // self.trainer.world_size
        if not self.data_train and not self.data_val and not self.data_test:
            x, y = load_digits(return_X_y=True)
            dataset = TensorDataset(torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(y))
            self.data_train, self.data_val, self.data_test = random_split(
                dataset, lengths=self.hparams.train_val_test_split, generator=torch.Generator().manual_seed(42))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data_train, batch_size=self.batch_size_per_device, num_workers=self.hparams.num_workers,
                          pin_memory=self.hparams.pin_memory, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data_val, batch_size=self.batch_size_per_device, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data_test, batch_size=self.batch_size_per_device, shuffle=False)

    def teardown(self, stage: Optional[str] = None) -> None:
        pass

    def state_dict(self) -> Dict[Any, Any]:
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        pass
'''

CLI_MODULE = '''\
import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F


class CLIClassifier(L.LightningModule):
    def __init__(self, hidden: int = 64, optimizer: OptimizerCallable = torch.optim.SGD,
                 scheduler: LRSchedulerCallable = torch.optim.lr_scheduler.ConstantLR):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}
'''

# A plain model of the user's own taking another as an argument: both entry points build it.
BACKBONE_MODEL = '''\
from torch import nn


class Headed(nn.Module):
    def __init__(self, backbone: nn.Module, features: int = 32, out_dim: int = 10, head=None):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Linear(features, out_dim)

    def forward(self, batch):
        return self.head(self.backbone(batch))
'''

LHT_ARGS = {'net': {'name': 'dense_net', 'args': {'input_size': 64, 'lin1_size': 64, 'lin2_size': 64,
                                                 'output_size': 10}},
            'optimizer': {'name': 'Adam', 'args': {'lr': 0.002, 'weight_decay': 0.0}},
            'scheduler': {'name': 'ReduceLROnPlateau', 'args': {'mode': 'min', 'factor': 0.1, 'patience': 10}},
            'compile': False}
CLI_ARGS = {'hidden': 64, 'optimizer': {'name': 'Adam', 'args': {'lr': 0.01}},
            'scheduler': {'name': 'StepLR', 'args': {'step_size': 1, 'gamma': 0.5}}}
# Where a user drops each file (the DDP copy), with the registry line and the name of its class.
FILES = {'models/dense_net.py': (DENSE_NET, 'from models import register', 'DenseNet', 'dense_net'),
         'models/wrappers/digits_module.py': (LIT_MODULE, 'from models.wrappers import register',
                                              'DigitsLitModule', 'lht_module'),
         'datasets/digits_datamodule.py': (DATA_MODULE, 'from utils import DATA_MODULES\nregister = '
                                                        'DATA_MODULES.register', 'DigitsDataModule', 'lht_digits')}


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[None]:
    """The user's files imported and their classes registered, as their `@register` lines would."""
    net, module, data, cli, headed = (imported(tmp_path / f'{name}.py', source) for name, source in [
        ('dense_net', DENSE_NET), ('digits_module', LIT_MODULE), ('digits_datamodule', DATA_MODULE),
        ('cli_module', CLI_MODULE), ('headed', BACKBONE_MODEL)])
    with registering((MODELS, 'dense_net', net.DenseNet), (WRAPPERS, 'lht_module', module.DigitsLitModule),
                     (DATA_MODULES, 'lht_digits', data.DigitsDataModule), (WRAPPERS, 'cli_module', cli.CLIClassifier),
                     (MODELS, 'headed', headed.Headed)):
        yield


def write_config(path: Path, wrapper: str, args: dict, monitor: str, max_epochs: int = 3) -> str:
    cfg = {'seed': 0, 'data_module': {'name': 'lht_digits', 'args': {'batch_size': 64}},
           'train_wrapper': {'name': wrapper, 'args': args},
           'trainer_params': {'max_epochs': max_epochs, 'accelerator': 'cpu', 'enable_model_summary': False},
           'checkpoint': {'monitor': monitor, 'mode': 'max'}}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def last(exp: Path) -> dict:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)


def epoch_accuracies(exp: Path) -> list[float]:
    lines = [line for line in (exp / 'log.txt').read_text().splitlines() if line.startswith('epoch ')]
    return [float(line.split('val: acc ')[1].split()[0]) for line in lines]


def test_an_lht_module_takes_its_net_optimizer_and_scheduler_from_specs_and_trains_resumes_and_tests(
        registered: None, save_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'lht.yaml', 'lht_module', LHT_ARGS, 'val/acc')
    assert run_pl(save_root, '--config', config, '--name', 'whole') == 0
    assert run_pl(save_root, '--config', config, '--name', 'part', 'trainer_params.max_epochs=2') == 0
    assert run_pl(save_root, '--resume', str(save_root / 'part'), 'trainer_params.max_epochs=3') == 0
    whole, part = last(save_root / 'whole'), last(save_root / 'part')
    assert epoch_accuracies(save_root / 'whole')[-1] >= 0.85
    # Stopped after 2 epochs and resumed, it ends bit-identical to the uninterrupted run.
    assert whole['state_dict'].keys() == part['state_dict'].keys()
    assert all(torch.equal(whole['state_dict'][k], part['state_dict'][k]) for k in whole['state_dict'])
    # The optimizer and the scheduler were the specs' classes with their args.
    group = whole['optimizer_states'][0]['param_groups'][0]
    assert (group['lr'], group['weight_decay']) == (0.002, 0.0)
    assert 'exp_avg' in whole['optimizer_states'][0]['state'][0]   # Adam's
    plateau = whole['lr_schedulers'][0]
    assert (plateau['mode'], plateau['factor'], plateau['patience']) == ('min', 0.1, 10)
    # The checkpoint loads with weights_only=True: the factories are saved as their specs (Lightning
    # leaves the module `net` out of the hyperparameters itself: its weights are in the state_dict).
    assert whole['hyper_parameters'] == {k: v for k, v in LHT_ARGS.items() if k != 'net'}
    assert run_pl(save_root, '--test', str(save_root / 'whole')) == 0
    tests = yaml.safe_load((save_root / 'whole' / 'test.yaml').read_text())
    assert list(tests.values())[0]['test/acc'] >= 0.85


def test_a_bundled_model_is_the_net_of_an_lht_module(registered: None, save_root: Path, tmp_path: Path) -> None:
    # `net: {name: mlp}`: lightyaml's own MLP, called as `self.net(x)` with the image tensor.
    args = {**LHT_ARGS, 'net': {'name': 'mlp', 'args': {'in_dim': 64, 'hidden': [64], 'out_dim': 10}}}
    config = write_config(tmp_path / 'mlp.yaml', 'lht_module', args, 'val/acc')
    assert run_pl(save_root, '--config', config, '--name', 'mlp') == 0
    assert epoch_accuracies(save_root / 'mlp')[-1] >= 0.8   # 0.87 after 3 epochs (Adam at 2e-3)
    assert last(save_root / 'mlp')['state_dict']['net.net.0.weight'].shape == (64, 64)


def test_a_lightning_cli_module_takes_optimizer_callables(registered: None, save_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'cli.yaml', 'cli_module', CLI_ARGS, 'val_acc', max_epochs=2)
    assert run_pl(save_root, '--config', config, '--name', 'cli') == 0
    exp = save_root / 'cli'
    assert epoch_accuracies(exp)[-1] >= 0.85
    state = last(exp)
    assert state['optimizer_states'][0]['param_groups'][0]['initial_lr'] == 0.01
    assert (state['lr_schedulers'][0]['step_size'], state['lr_schedulers'][0]['gamma']) == (1, 0.5)
    assert state['hyper_parameters'] == CLI_ARGS
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    assert last(exp)['epoch'] == 2 and len(epoch_accuracies(exp)) == 3
    assert run_pl(save_root, '--test', str(exp)) == 0


def test_what_a_parameter_makes_of_a_spec() -> None:
    from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

    from lightyaml.object_args import Takes, takes
    spec = {'name': 'x'}
    assert takes(nn.Module, spec) == Takes(False, ('models', 'losses'))
    assert takes(nn.Linear | None, spec) == Takes(False, ('models', 'losses'))
    assert takes(torch.optim.Optimizer, spec) == Takes(True, ('optimizers',))
    assert takes(torch.optim.lr_scheduler, spec) == takes(LRSchedulerCallable, spec) == Takes(True, ('schedulers',))
    assert takes(OptimizerCallable, spec) == Takes(True, ('optimizers',))
    assert takes(functools.partial, spec).factory and takes(callable, spec) is None
    # Plain values, the template's own Spec[...] arguments and unannotated ones are passed as they are...
    from utils import Spec
    assert takes(nn.Module, 'mlp') is None and takes(Spec['models'], spec) is None and takes(dict, spec) is None
    # ... unless Hydra's marker says.
    assert takes(None, {'name': 'mlp', '_partial_': False}).factory is False
    assert takes(nn.Module, {'name': 'mlp', '_partial_': True}) == Takes(True, ('models', 'losses'))


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_model_taking_a_model_is_built_by_both_entry_points(entry: str, registered: None, save_root: Path,
                                                              tmp_path: Path) -> None:
    from conftest import DIGITS
    backbone = {'name': 'mlp', 'args': {'in_dim': 64, 'hidden': [64], 'out_dim': 32}}
    head = {'name': 'mlp', 'args': {'in_dim': 32, 'hidden': [], 'out_dim': 10, 'input_key': 'features'},
            '_partial_': False}
    assert RUNNERS[entry](save_root, '--config', DIGITS, '--name', 'headed', 'trainer_params.max_epochs=3',
                          'train_wrapper.args.model_spec.name=headed',
                          f'train_wrapper.args.model_spec.args={{backbone: {backbone}, features: 32}}') == 0
    assert epoch_accuracies(save_root / 'headed')[-1] >= 0.85
    keys = last(save_root / 'headed')['state_dict'].keys()
    assert {'model.backbone.net.0.weight', 'model.head.weight'} <= set(keys)
    # An unannotated `head` gets the model (not its spec) through the marker.
    from utils import MODELS as models
    built = models.make({'name': 'headed', 'args': {'backbone': backbone, 'head': head}})
    assert type(built.head).__name__ == 'MLP' and built.head.input_key == 'features'


BAD = {   # a key below train_wrapper.args, the value written there, the line's problem
    'an unknown net': ('net.name', 'dense_nett',
                       "train_wrapper.args.net.name: unknown model 'dense_nett' (did you mean 'dense_net'?)"),
    "a net's bad argument": ('net.args.lin1_sise', 3,
                             "train_wrapper.args.net.args.lin1_sise: model 'dense_net' does not take 'lin1_sise' "
                             "(did you mean 'lin1_size'"),
    "a net's argument of the wrong type": ('net.args.lin1_size', 'wide',
                                           "train_wrapper.args.net.args.lin1_size: expected int, got str 'wide'"),
    "an optimizer's bad argument": ('optimizer.args.lrr', 0.1,
                                    "train_wrapper.args.optimizer.args.lrr: optimizer 'Adam' does not take 'lrr' "
                                    "(did you mean 'lr'?)"),
    'an unknown scheduler': ('scheduler.name', 'StepLRR',
                             "train_wrapper.args.scheduler.name: unknown scheduler 'StepLRR' (did you mean 'StepLR'"),
    'a bad marker': ('net._partial_', 'maybe',
                     "train_wrapper.args.net._partial_: expected true (a factory: the class with these args bound) "
                     "or false (the object), got 'maybe'"),
}


@pytest.mark.parametrize('case', BAD)
def test_a_bad_object_spec_is_one_line_naming_the_key(case: str, registered: None, save_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    where, value, problem = BAD[case]
    args = copy.deepcopy(LHT_ARGS)
    *path, last_key = where.split('.')
    functools.reduce(dict.__getitem__, path, args)[last_key] = value
    config = write_config(tmp_path / 'lht.yaml', 'lht_module', args, 'val/acc')
    assert run_pl(save_root, '--config', config) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {config}: {problem}'), err
    assert not save_root.exists()


@pytest.mark.slow
def test_lht_files_dropped_into_the_folders_train_with_ddp(tmp_path: Path) -> None:
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    for where, (source, import_line, cls, name) in FILES.items():
        source = source.replace(f'\nclass {cls}(', f"\n@register('{name}')\nclass {cls}(")
        (project / where).write_text(f'{import_line}\n{source}')
    config = write_config(tmp_path / 'ddp.yaml', 'lht_module', LHT_ARGS, 'val/acc', max_epochs=2)
    done = subprocess.run([sys.executable, 'train_pl.py', '--config', config, '--name', 'ddp',
                           '--save-root', str(tmp_path / 'save'), 'trainer_params.devices=2',
                           'trainer_params.strategy=ddp', *QUIET],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = tmp_path / 'save' / 'ddp'
    assert len(epoch_accuracies(exp)) == 2 and epoch_accuracies(exp)[-1] >= 0.8
    assert last(exp)['hyper_parameters']['optimizer'] == LHT_ARGS['optimizer']
    done = subprocess.run([sys.executable, 'train_pl.py', '--test', str(exp), '--save-root', str(tmp_path / 'save'),
                           *QUIET], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(yaml.safe_load((exp / 'test.yaml').read_text()).values())[0]['test/acc'] >= 0.8
