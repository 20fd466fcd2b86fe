"""Lazy modules materialize in any LightningModule (issue 25, point 6): one with no `forward` that
calls `self.net` in its `training_step`, one whose `forward(x)` takes the inputs of a `(x, y)`
batch; the first batch goes through the step the module defines, its logging muted and its
torchmetrics untouched, and the checkpoint reloads for --test. The modules are text in the usual
Lightning style, imported as a user's file is.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from conftest import QUIET, ROOT, imported, registering, run_pl
from utils import DATA_MODULES, WRAPPERS

MODULES = '''\
import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


class DigitsTuples(L.LightningDataModule):
    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage):
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(y)
        self.train_set, self.val_set = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


class NoForward(L.LightningModule):
    """Lazy layers, no forward: the steps call self.net."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.LazyLinear(10))
        self.train_acc = MulticlassAccuracy(num_classes=10)
        self.val_acc = MulticlassAccuracy(num_classes=10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.train_acc.update(logits, y)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def on_train_epoch_end(self):
        self.log("train_acc", self.train_acc.compute())
        self.train_acc.reset()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self.net(x), y)
        self.log("val_acc", self.val_acc)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class InputsForward(NoForward):
    """... and a forward of the inputs alone, as Lightning's examples write it."""

    def forward(self, x):
        return self.net(x)
'''


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[object]:
    module = imported(tmp_path / 'lazy_lit.py', MODULES)
    with registering((DATA_MODULES, 'digits_tuples', module.DigitsTuples), (WRAPPERS, 'no_forward', module.NoForward),
                     (WRAPPERS, 'inputs_forward', module.InputsForward)):
        yield module


def write_config(path: Path, wrapper: str, max_epochs: int = 2) -> str:
    cfg = {'seed': 0, 'data_module': {'name': 'digits_tuples', 'args': {'batch_size': 32}},
           'train_wrapper': {'name': wrapper, 'args': {'hidden': 32}},
           'trainer_params': {'max_epochs': max_epochs, 'accelerator': 'cpu', 'enable_model_summary': False},
           'checkpoint': {'monitor': 'val_acc', 'mode': 'max'}}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def metrics_rows(exp: Path) -> list[dict[str, str]]:
    with open(exp / 'metrics.csv') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('wrapper', ['no_forward', 'inputs_forward'])
def test_a_lazy_module_materializes_through_its_own_step_and_reloads_for_test(
        wrapper: str, registered: object, save_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'lazy.yaml', wrapper)
    assert run_pl(save_root, '--config', config, '--name', 'lazy') == 0
    exp = save_root / 'lazy'
    log = (exp / 'log.txt').read_text()
    assert 'parameters: 2,410 total (net 2,410)' in log   # 64*32+32 + 32*10+10, counted after materializing
    state = torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['state_dict']['net.1.weight'].shape == (32, 64)
    # The muted first step left the module's metrics alone: epoch 1's train_acc is epoch 1's batches only.
    rows = [r for r in metrics_rows(exp) if r.get('train_acc')]
    assert len(rows) == 2 and 0.5 < float(rows[0]['train_acc']) < float(rows[1]['train_acc'])
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    accs = [float(r['val_acc']) for r in metrics_rows(exp) if r.get('val_acc')]
    assert len(accs) == 3 and accs[-1] >= 0.85
    assert run_pl(save_root, '--test', str(exp)) == 0
    tests = yaml.safe_load((exp / 'test.yaml').read_text())
    assert list(tests.values())[0]['test_acc'] >= 0.85


def test_the_first_step_draws_nothing_and_leaves_metrics_and_logging_as_they_were(registered: object) -> None:
    from callbacks.lazy_modules import first_step
    from lightyaml.train.lazy import materialize
    module = registered.NoForward(hidden=8)
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))), batch_size=4, shuffle=True)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    assert materialize(module, loader, lambda batch: first_step(module, batch))
    assert torch.equal(torch.rand(3), expected)   # the loader's shuffle and the weights' init were undone
    assert module.net[1].weight.shape == (8, 64) and module.net[3].weight.shape == (10, 8)
    assert module.train_acc._update_count == 0 and module.training
    assert 'log' not in vars(module) and 'log_dict' not in vars(module)   # Lightning's own methods again
    assert not materialize(module, loader)   # nothing lazy left: nothing runs


@pytest.mark.slow
def test_a_lazy_module_without_forward_trains_with_ddp(tmp_path: Path) -> None:
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    # The one file in both folders, each registering its own class (each registry scans its folder).
    for folder, cls, line in [('datasets', 'DigitsTuples', "@DATA_MODULES.register('digits_tuples')"),
                              ('models/wrappers', 'NoForward', "@WRAPPERS.register('no_forward')")]:
        source = MODULES.replace(f'\nclass {cls}(', f'\n{line}\nclass {cls}(')
        (project / folder / 'lazy_lit.py').write_text(f'from utils import DATA_MODULES, WRAPPERS\n{source}')
    config = write_config(tmp_path / 'ddp.yaml', 'no_forward', max_epochs=1)
    done = subprocess.run([sys.executable, 'train_pl.py', '--config', config, '--name', 'ddp',
                           '--save-root', str(tmp_path / 'save'), 'trainer_params.devices=2',
                           'trainer_params.strategy=ddp', *QUIET],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / 'save' / 'ddp' / 'ckpt' / 'last.ckpt', weights_only=True)
    assert state['state_dict']['net.1.weight'].shape == (32, 64)
