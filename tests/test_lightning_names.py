"""User code that imports `lightning` (`import lightning as L`, `from lightning.pytorch... import`)
runs as it ships (issue 25, point 5): the names are the pytorch_lightning lightyaml runs, so a
LightningModule, LightningDataModule, callback and logger written against them train, resume,
test and run under DDP (lightyaml/lightning_names.py).

The user's files below are text, written to disk and imported as a user's file is, in the style of
Lightning's own examples; only the `@register` lines (added for the DDP copy) are ours.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

from conftest import QUIET, ROOT, imported, registering, run_pl
from utils import CALLBACKS, DATA_MODULES, LOGGERS, WRAPPERS

DATA = '''\
import lightning as L
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str):
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
        self.train_set, self.val_set = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)
'''

MODULE = '''\
import lightning as L
import torch
from torch import nn
from torch.nn import functional as F


class LitClassifier(L.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
'''

CALLBACK_AND_LOGGER = '''\
import json
import os

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class EpochsSeen(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.log("epochs_seen", float(trainer.current_epoch + 1))


class JsonLinesLogger(Logger):
    def __init__(self, save_dir: str = "."):
        super().__init__()
        self._save_dir = save_dir

    @property
    def name(self):
        return "jsonl"

    @property
    def version(self):
        return 0

    @property
    def save_dir(self):
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params):
        pass

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        with open(os.path.join(self._save_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\\n")
'''

# Where a user drops each file, and the `@register` line each class gets.
FILES = {'datasets/lit_digits.py': (DATA, 'from utils import DATA_MODULES',
                                    {'DigitsDataModule': 'DATA_MODULES.register'}),
         'models/wrappers/lit_classifier.py': (MODULE, 'from utils import WRAPPERS',
                                               {'LitClassifier': 'WRAPPERS.register'}),
         'callbacks/lit_extras.py': (CALLBACK_AND_LOGGER, 'from utils import CALLBACKS, LOGGERS',
                                     {'EpochsSeen': 'CALLBACKS.register', 'JsonLinesLogger': 'LOGGERS.register'})}
NAMES = {'DigitsDataModule': 'lit_digits', 'LitClassifier': 'lit_classifier', 'EpochsSeen': 'epochs_seen',
         'JsonLinesLogger': 'jsonl'}


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[None]:
    """The three files imported (utils, hence lightyaml's names, already are) and their classes
    registered as their `@register` lines would."""
    data, module, extras = (imported(tmp_path / f'{name}.py', source)
                            for name, source in [('lit_digits', DATA), ('lit_classifier', MODULE),
                                                 ('lit_extras', CALLBACK_AND_LOGGER)])
    with registering((DATA_MODULES, 'lit_digits', data.DigitsDataModule),
                     (WRAPPERS, 'lit_classifier', module.LitClassifier),
                     (CALLBACKS, 'epochs_seen', extras.EpochsSeen), (LOGGERS, 'jsonl', extras.JsonLinesLogger)):
        yield


def write_config(path: Path, max_epochs: int = 2) -> str:
    cfg = {'seed': 0, 'data_module': {'name': 'lit_digits', 'args': {'batch_size': 32}},
           'train_wrapper': {'name': 'lit_classifier', 'args': {'hidden': 64}},
           'callbacks': [{'name': 'epochs_seen'}], 'loggers': [{'name': 'jsonl'}],
           'trainer_params': {'max_epochs': max_epochs, 'accelerator': 'cpu', 'enable_model_summary': False},
           'checkpoint': {'monitor': 'val_acc', 'mode': 'max'}}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_lightning_names_are_the_pytorch_lightning_that_runs() -> None:
    import lightning as L
    import lightning.pytorch as lp
    import lightning_fabric.utilities.seed
    import pytorch_lightning.callbacks
    from lightning.fabric.utilities import seed
    from lightning.pytorch.callbacks import ModelCheckpoint
    assert (L.LightningModule, L.LightningDataModule, L.Trainer, L.Callback) == (
        pl.LightningModule, pl.LightningDataModule, pl.Trainer, pl.Callback)
    assert lp is pl and L.pytorch is pl and L.__version__ == pl.__version__
    assert ModelCheckpoint is pytorch_lightning.callbacks.ModelCheckpoint
    assert seed is lightning_fabric.utilities.seed
    assert sys.modules['lightning.pytorch.callbacks'] is pytorch_lightning.callbacks
    assert pl.callbacks.__spec__.name == 'pytorch_lightning.callbacks'   # the real module's own spec kept
    with pytest.raises(AttributeError, match="module 'lightning' has no attribute 'NoSuchThing'"):
        _ = L.NoSuchThing


def test_a_lightning_style_module_data_callback_and_logger_train_resume_and_test(
        registered: None, save_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'lit.yaml')
    assert run_pl(save_root, '--config', config, '--name', 'lit') == 0
    exp = save_root / 'lit'
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    lines = [line for line in (exp / 'log.txt').read_text().splitlines() if line.startswith('epoch ')]
    assert [line.split()[1] for line in lines] == ['1/2', '2/2', '3/3']
    assert float(lines[-1].split('val: acc ')[1].split()[0]) >= 0.85
    with open(exp / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [float(r['epochs_seen']) for r in rows if r.get('epochs_seen')] == [1.0, 2.0, 3.0]   # the callback's log
    # The user's logger was handed the experiment folder as its save_dir, and written on every epoch.
    logged = [json.loads(line) for line in (exp / 'metrics.jsonl').read_text().splitlines()]
    assert sorted({m['epochs_seen'] for m in logged if 'epochs_seen' in m}) == [1.0, 2.0, 3.0]
    assert run_pl(save_root, '--test', str(exp)) == 0
    tests = yaml.safe_load((exp / 'test.yaml').read_text())
    assert list(tests.values())[0]['test_acc'] >= 0.85


@pytest.mark.slow
def test_lightning_style_files_dropped_into_the_folders_train_with_ddp(tmp_path: Path) -> None:
    # A copy of the project with the three files dropped in as a user would, one `@register` line
    # on each class; DDP starts fresh processes, which import them by the registries' scans.
    project = tmp_path / 'project'
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns('save', 'load', '.git', '__pycache__', 'tests'))
    for where, (source, import_line, classes) in FILES.items():
        for cls, register in classes.items():
            source = source.replace(f'\nclass {cls}(', f"\n@{register}('{NAMES[cls]}')\nclass {cls}(")
        (project / where).write_text(f'{import_line}\n{source}')
    config = write_config(tmp_path / 'ddp.yaml', max_epochs=1)
    done = subprocess.run([sys.executable, 'train_pl.py', '--config', config, '--name', 'ddp',
                           '--save-root', str(tmp_path / 'save'), 'trainer_params.devices=2',
                           'trainer_params.strategy=ddp', *QUIET],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = tmp_path / 'save' / 'ddp'
    epochs = [line for line in (exp / 'log.txt').read_text().splitlines() if line.startswith('epoch ')]
    assert len(epochs) == 1 and float(epochs[0].split('val: acc ')[1].split()[0]) >= 0.8
    logged = [json.loads(line) for line in (exp / 'metrics.jsonl').read_text().splitlines()]
    assert [m['epochs_seen'] for m in logged if 'epochs_seen' in m] == [1.0]   # rank 0 alone wrote it
    assert 'lightning.pytorch' not in done.stderr and 'Traceback' not in done.stderr
