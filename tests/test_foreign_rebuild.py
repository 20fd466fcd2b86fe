"""Code from elsewhere, rebuilt and evaluated as it ships (issue 25, points 1 to 3):

- a run's module is rebuilt for --test, --predict, --export, --init-from and --resume from the
  arguments in its config.yaml, whether or not it called save_hyperparameters() (a module in the
  style of Lightning's `DemoModel(out_dim=...)`, and Lightning's own);
- a data module without test_dataloader()/predict_dataloader(): one line naming the missing method
  (exit 2), or --predict on the split the printed line names; never a traceback;
- predictions.csv gives classes and probabilities only for a run known to classify; an
  autoencoder's reconstructions are written value by value.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.demos.boring_classes import BoringDataModule, DemoModel
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from conftest import DIGITS, RUNNERS, registering, run_pl, run_py
from utils import DATA_MODULES, WRAPPERS


class RandomVectors(Dataset):
    """Lightning's RandomDataset shape: `length` random vectors of `size` features, fixed by `seed`."""

    def __init__(self, size: int, length: int, seed: int) -> None:
        self.data = torch.randn(length, size, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


class VectorsFit(pl.LightningDataModule):
    """A data module in the style of Lightning's BoringDataModule with only what fitting needs:
    plain tensor batches, the sets made in setup(stage)."""

    def __init__(self, features: int = 32, batch_size: int = 16) -> None:
        super().__init__()
        self.features, self.batch_size = features, batch_size

    def setup(self, stage: str) -> None:
        if stage == 'fit':
            self.train_set = RandomVectors(self.features, 64, seed=1)
        if stage in ('fit', 'validate'):
            self.val_set = RandomVectors(self.features, 32, seed=2)
        if stage == 'test':
            self.test_set = RandomVectors(self.features, 48, seed=3)
        if stage == 'predict':
            self.predict_set = RandomVectors(self.features, 40, seed=4)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class VectorsWithTest(VectorsFit):
    """... and a test split, but no predict_dataloader()."""

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


class Vectors(VectorsWithTest):
    """... and a predict split too: all four loaders."""

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.predict_set, batch_size=self.batch_size)


class OutDimModel(pl.LightningModule):
    """Lightning's DemoModel pattern: a constructor argument that shapes a layer, never saved with
    save_hyperparameters(), so the checkpoint cannot say how to rebuild it."""

    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
        super().__init__()
        self.l1 = nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.l1(x.view(x.size(0), -1)))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self(batch).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log('val_out', self(batch).mean())

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log('test_out', self(batch).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


class AutoEncoder(pl.LightningModule):
    """Lightning's autoencoder example shape: flat 784-pixel images in, their reconstructions out of
    predict_step (N x 784), a loss of its own (MSE); nothing saved with save_hyperparameters()."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, hidden))
        self.decoder = nn.Sequential(nn.Linear(hidden, 64), nn.ReLU(), nn.Linear(64, 784))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = F.mse_loss(self.decoder(self.encoder(batch)), batch)
        self.log('train_loss', loss)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log('val_loss', F.mse_loss(self.decoder(self.encoder(batch)), batch))

    def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.decoder(self.encoder(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class PlainDigitsFit:
    """A plain (not Lightning) data module of the user's own: dict batches of digits, train and val
    loaders only."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        from datasets.digits import Digits
        return DataLoader(Digits(split), batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self.loader('train', shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader('val')


@pytest.fixture
def registered() -> Iterator[None]:
    """The classes above registered for the test, as a user's files would register them."""
    with registering((WRAPPERS, 'out_dim_model', OutDimModel), (WRAPPERS, 'autoencoder', AutoEncoder),
                     (WRAPPERS, 'lightning_demo', DemoModel),
                     (DATA_MODULES, 'vectors', Vectors), (DATA_MODULES, 'vectors_with_test', VectorsWithTest),
                     (DATA_MODULES, 'vectors_fit', VectorsFit), (DATA_MODULES, 'plain_digits_fit', PlainDigitsFit),
                     (DATA_MODULES, 'lightning_boring', BoringDataModule)):
        yield


def write_config(path: Path, wrapper: str, data: str, wrapper_args: dict, data_args: dict | None = None,
                 **sections: object) -> str:
    cfg = {'seed': 0, 'data_module': {'name': data, 'args': data_args or {}},
           'train_wrapper': {'name': wrapper, 'args': wrapper_args},
           'trainer_params': {'max_epochs': 2, 'accelerator': 'cpu', 'enable_model_summary': False}, **sections}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def weights(exp: Path) -> dict:
    return torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)


# ---------------------------------------------------------------- 1. rebuilt from config.yaml's arguments

def test_a_module_without_saved_hyperparameters_tests_predicts_and_resumes_with_its_config_arguments(
        registered: None, save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / 'demo.yaml', 'out_dim_model', 'vectors', {'out_dim': 4})
    assert run_pl(save_root, '--config', config, '--name', 'demo') == 0
    exp = save_root / 'demo'
    state = weights(exp)
    assert not state.get('hyper_parameters') and state['state_dict']['l1.weight'].shape == (4, 32)
    # Rebuilt with out_dim: 4 from config.yaml, not the constructor's default of 10.
    assert run_pl(save_root, '--test', str(exp)) == 0
    assert list(yaml.safe_load((exp / 'test.yaml').read_text()).values())[0]['test_out'] >= 0
    assert run_pl(save_root, '--predict', str(exp), '--ckpt', 'last') == 0
    rows = read_rows(exp / 'predictions.csv')
    assert list(rows[0]) == ['index', 'out_0', 'out_1', 'out_2', 'out_3'] and len(rows) == 40
    model = OutDimModel(out_dim=4)
    model.load_state_dict(state['state_dict'])
    with torch.no_grad():
        expected = model(RandomVectors(32, 40, seed=4).data)
    assert torch.tensor([[float(r[f'out_{j}']) for j in range(4)] for r in rows]) == pytest.approx(expected, abs=1e-5)
    # --resume and --init-from build it from the config too.
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    assert weights(exp)['epoch'] == 2
    assert run_pl(save_root, '--config', config, '--name', 'tuned', '--init-from', str(exp)) == 0
    assert 'Traceback' not in capsys.readouterr().err


def test_a_changed_shape_on_the_command_line_is_one_line_naming_both_shapes(
        registered: None, save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / 'demo.yaml', 'out_dim_model', 'vectors', {'out_dim': 4},
                          trainer_params={'max_epochs': 1, 'accelerator': 'cpu'})
    assert run_pl(save_root, '--config', config, '--name', 'demo') == 0
    capsys.readouterr()
    assert run_pl(save_root, '--predict', str(save_root / 'demo'), 'train_wrapper.args.out_dim=6') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'l1.weight (4, 32) vs (6, 32)' in err[0] and err[0].startswith('error: --predict ')
    # --resume names the override against config.yaml's arguments, the checkpoint having none.
    assert run_pl(save_root, '--resume', str(save_root / 'demo'), 'train_wrapper.args.out_dim=6',
                  'trainer_params.max_epochs=2') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: --resume ") and ("override 'train_wrapper.args.out_dim=6' changes the shape of l1.weight (4x32 in the "
                                 "checkpoint, 6x32 now)") in err[0], err


def test_lightning_s_own_demo_model_predicts_with_its_out_dim_and_test_says_what_is_missing(
        registered: None, save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / 'boring.yaml', 'lightning_demo', 'lightning_boring', {'out_dim': 4},
                          trainer_params={'max_epochs': 1, 'accelerator': 'cpu', 'limit_train_batches': 8,
                                          'limit_val_batches': 0, 'enable_model_summary': False})
    assert run_pl(save_root, '--config', config, '--name', 'boring') == 0
    exp = save_root / 'boring'
    assert run_pl(save_root, '--predict', str(exp)) == 0
    rows = read_rows(exp / 'predictions.csv')
    assert list(rows[0]) == ['index', 'out_0', 'out_1', 'out_2', 'out_3'] and len(rows) == 64
    capsys.readouterr()
    assert run_pl(save_root, '--test', str(exp)) == 2   # DemoModel defines no test_step
    err = capsys.readouterr().err
    assert err.strip() == (f"error: --test {exp}: training wrapper 'lightning_demo' (DemoModel) has no test_step(); "
                           f"add one that logs the test metrics (self.log('test/acc', ...))")


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_a_base_run_is_rebuilt_from_its_config_not_from_the_checkpoint_s_hyperparameters(
        entry: str, save_root: Path, tmp_path: Path) -> None:
    run = RUNNERS[entry]
    model = 'train_wrapper.args.model_spec={name: mlp, args: {in_dim: 64, hidden: [24], out_dim: 10}}'
    assert run(save_root, '--config', DIGITS, '--name', 'mlp', model, 'trainer_params.max_epochs=2') == 0
    exp = save_root / 'mlp'
    for ckpt in (exp / 'ckpt').glob('*.ckpt'):   # as if the wrapper had saved nothing
        state = torch.load(ckpt, map_location='cpu', weights_only=True)
        state['hyper_parameters'] = {}
        torch.save(state, ckpt)
    assert run(save_root, '--test', str(exp)) == 0
    assert run(save_root, '--predict', str(exp), '--out', str(tmp_path / 'p.csv')) == 0
    assert list(read_rows(tmp_path / 'p.csv')[0]) == ['index', 'pred', 'prob']
    assert run(save_root, '--export', str(exp), '--format', 'torchscript') == 0
    assert (exp / 'export' / 'model.torchscript.pt').is_file()


# ---------------------------------------------------------------- 2. a data module without that loader

def test_predict_without_predict_dataloader_uses_the_test_split_and_says_so(
        registered: None, save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / 'demo.yaml', 'out_dim_model', 'vectors_with_test', {'out_dim': 3},
                          trainer_params={'max_epochs': 1, 'accelerator': 'cpu'})
    assert run_pl(save_root, '--config', config, '--name', 'demo') == 0
    capsys.readouterr()
    exp = save_root / 'demo'
    assert run_pl(save_root, '--predict', str(exp)) == 0
    out = capsys.readouterr()
    assert (f"--predict {exp}: data module 'vectors_with_test' (VectorsWithTest) has no predict_dataloader(); "
            f"predicting on its test_dataloader()") in out.out
    assert len(read_rows(exp / 'predictions.csv')) == 48 and 'Traceback' not in out.err   # the test split's 48


def test_a_lightning_data_module_with_train_and_val_only(
        registered: None, save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / 'demo.yaml', 'out_dim_model', 'vectors_fit', {'out_dim': 3},
                          trainer_params={'max_epochs': 1, 'accelerator': 'cpu'})
    assert run_pl(save_root, '--config', config, '--name', 'demo') == 0
    capsys.readouterr()
    exp = save_root / 'demo'
    assert run_pl(save_root, '--test', str(exp)) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: --test {exp}: data module 'vectors_fit' (VectorsFit) has no test_dataloader(); "
                           f"add one to VectorsFit that returns the test loader")
    assert run_pl(save_root, '--predict', str(exp)) == 0   # on the validation set, set up as for fitting
    assert 'predicting on its val_dataloader()' in capsys.readouterr().out
    assert len(read_rows(exp / 'predictions.csv')) == 32
    assert run_pl(save_root, '--predict', str(exp), '--data', '{name: digits}') == 2
    assert capsys.readouterr().err.strip() == ("error: --data: data module 'vectors_fit' (VectorsFit) gives its own "
                                               "data (its predict_dataloader()); leave out --data")


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_a_plain_data_module_with_train_and_val_only(
        entry: str, registered: None, save_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = RUNNERS[entry]
    base = {'model_spec': {'name': 'mlp', 'args': {'in_dim': 64, 'hidden': [32], 'out_dim': 10}},
            'loss_spec': {'name': 'ce'}, 'optim_spec': {'name': 'Adam', 'args': {'lr': 1e-2}}}
    config = write_config(tmp_path / 'plain.yaml', 'base', 'plain_digits_fit', base,
                          trainer_params={'max_epochs': 1, 'accelerator': 'cpu'})
    assert run(save_root, '--config', config, '--name', 'plain') == 0
    capsys.readouterr()
    exp = save_root / 'plain'
    assert run(save_root, '--test', str(exp)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --test {exp}: data module 'plain_digits_fit' (PlainDigitsFit) has no test_dataloader(); "
        f"add one to PlainDigitsFit that returns the test loader")
    assert run(save_root, '--predict', str(exp)) == 0
    out = capsys.readouterr()
    assert 'predicting on its val_dataloader()' in out.out and 'Traceback' not in out.err
    from datasets.digits import Digits
    rows = read_rows(exp / 'predictions.csv')
    assert list(rows[0]) == ['index', 'pred', 'prob'] and len(rows) == len(Digits('val'))   # classified


def test_no_loader_to_predict_on_at_all_is_one_line() -> None:
    from lightyaml.errors import ConfigError
    from lightyaml.run.results import served_stage

    class TrainOnly:
        def train_dataloader(self) -> list:
            return []
    with pytest.raises(ConfigError) as e:
        served_stage(TrainOnly(), 'predict', {'data_module': {'name': 'mine'}}, '--predict save/x')
    assert str(e.value) == ("--predict save/x: data module 'mine' (TrainOnly) has no predict_dataloader(), nor a "
                            "test_dataloader() or val_dataloader() to predict on instead; add a predict_dataloader() "
                            "to TrainOnly")


# ---------------------------------------------------------------- 3. classes only for a run that classifies

class Pixels(VectorsFit):
    """Flat 28 x 28 'images' in [0, 1], MNIST's shape for an autoencoder."""

    def setup(self, stage: str) -> None:
        self.train_set = self.val_set = self.predict_set = torch.rand(24, 784,
                                                                      generator=torch.Generator().manual_seed(0))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.predict_set, batch_size=self.batch_size)


def test_an_autoencoder_s_reconstructions_are_written_value_by_value(
        registered: None, save_root: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'ae.yaml', 'autoencoder', 'pixels', {'hidden': 8},
                          trainer_params={'max_epochs': 1, 'accelerator': 'cpu'})
    with registering((DATA_MODULES, 'pixels', Pixels)):
        assert run_pl(save_root, '--config', config, '--name', 'ae') == 0
        exp = save_root / 'ae'
        assert run_pl(save_root, '--predict', str(exp), '--ckpt', 'last') == 0
        rows = read_rows(exp / 'predictions.csv')
        assert list(rows[0]) == ['index', *[f'out_{j}' for j in range(784)]] and len(rows) == 24
        model = AutoEncoder(hidden=8)
        model.load_state_dict(weights(exp)['state_dict'])
        data = Pixels()
        data.setup('predict')
        with torch.no_grad():
            expected = model.predict_step(data.predict_set, 0)
        assert torch.tensor([[float(r[f'out_{j}']) for j in range(784)] for r in rows]) == pytest.approx(
            expected, abs=1e-5)
        # Saying so in the config is the one way to get classes of such outputs.
        assert run_pl(save_root, '--predict', str(exp), 'predict.classify=true', '--out', str(tmp_path / 'c.csv')) == 0
        assert list(read_rows(tmp_path / 'c.csv')[0]) == ['index', 'pred', 'prob']


def test_what_makes_a_run_classify() -> None:
    from lightyaml.run.results import run_classifies
    digits = yaml.safe_load(Path(DIGITS).read_text())
    assert run_classifies(digits, None)   # the `ce` loss and Accuracy
    args = digits['train_wrapper']['args']
    no_loss = {**digits, 'train_wrapper': {'name': 'base', 'args': {**args, 'loss_spec': {'name': 'mse'}}}}
    assert run_classifies(no_loss, None)   # Accuracy still
    assert run_classifies({'train_wrapper': {'name': 'base', 'args': {'loss_spec': {'name': 'ce'}}}}, None)
    mae = {'mae': {'name': 'MeanAbsoluteError'}}
    regression = {**no_loss, 'train_wrapper': {'name': 'base', 'args': {**no_loss['train_wrapper']['args'],
                                                                          'metrics': mae}}}
    assert not run_classifies(regression, None)
    assert run_classifies(regression, ['cat', 'dog'])   # a classes.yaml
    assert not run_classifies({**digits, 'predict': {'classify': False}}, None)   # the config's word wins
    torch_loss = {'criterion': {'name': 'CrossEntropyLoss'}}   # a module taking torch's loss by name
    assert run_classifies({'train_wrapper': {'name': 'mine', 'args': torch_loss}}, None)
    multilabel = {'train_wrapper': {'name': 'base', 'args': {'metrics': {'f1': {
        'name': 'F1Score', 'args': {'task': 'multilabel', 'num_labels': 5}}}}}}
    assert not run_classifies(multilabel, None)
    assert not run_classifies({'train_wrapper': {'name': 'usual', 'args': {}}}, None)


def test_dict_and_tuple_outputs_get_a_column_per_value(tmp_path: Path) -> None:
    from lightyaml.run.results import prediction_columns, write_predictions
    batches = [{'recon': torch.ones(2, 2, 2), 'z': torch.zeros(2)}, {'recon': torch.ones(1, 2, 2), 'z': torch.ones(1)}]
    write_predictions(tmp_path / 'd.csv', prediction_columns(batches, '--predict x'), None, classify=True)
    rows = read_rows(tmp_path / 'd.csv')
    assert list(rows[0]) == ['index', 'recon_0', 'recon_1', 'recon_2', 'recon_3', 'z_0'] and len(rows) == 3
    assert [r['z_0'] for r in rows] == ['0.0', '0.0', '1.0']
    write_predictions(tmp_path / 't.csv', prediction_columns([(torch.ones(2, 3), torch.arange(2))], 'x'), None)
    assert list(read_rows(tmp_path / 't.csv')[0]) == ['index', 'out0_0', 'out0_1', 'out0_2', 'out1_0']
    assert read_rows(tmp_path / 't.csv')[1]['out1_0'] == '1'   # integers stay integers


@pytest.mark.parametrize('value, problem', [
    ('{classfy: true}', "predict.classfy: the predict section has no key 'classfy' (did you mean 'classify'?); "
                        "keys: classify"),
    ('{classify: maybe}', "predict.classify: expected true (classes and probabilities) or false (the output "
                          "values), got 'maybe'"),
    ('true', 'predict: expected a mapping such as {classify: true}, got bool True')])
def test_the_predict_section_is_checked_like_every_other(value: str, problem: str, save_root: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert run_py(save_root, '--config', DIGITS, f'predict={value}', '--dry-run') == 2
    assert capsys.readouterr().err.strip() == f"error: override 'predict={value}': {problem}"
