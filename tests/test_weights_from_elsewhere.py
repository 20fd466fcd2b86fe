"""`--init-from` a file of weights from elsewhere (issue 25, point 8): a plain
`torch.save(model.state_dict())`, a `{'state_dict': ...}` file, and a Lightning checkpoint whose
module holds the network under another attribute, loaded with the config's `init_from` mapping
(`strip_prefix`, `add_prefix`) or refused in one line naming the unmatched names and the mapping
that would match. Never a traceback; both entry points.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from conftest import DIGITS, RUNNERS, run_py

FAST = ['trainer_params.max_epochs=1', 'train_wrapper.args.model_spec.args.hidden=[16]']
# lr 0: the run keeps the weights it starts from, so they can be compared bit for bit.
FROZEN = ['train_wrapper.args.optim_spec.args.lr=0']


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)['state_dict']


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """A run's network weights as a user's `torch.save(model.state_dict())` would hold them."""
    save_root = tmp_path_factory.mktemp('base')
    assert run_py(save_root, '--config', DIGITS, '--name', 'base', *FAST) == 0
    return {k.removeprefix('model.'): v for k, v in weights(save_root / 'base').items()}


class Holder(pl.LightningModule):
    """A module from elsewhere holding the network as `self.net` (Lightning checkpoints it as `net.*`)."""

    def __init__(self) -> None:
        super().__init__()
        from models.mlp import MLP
        self.net = MLP(hidden=[16], dropout=0.2)   # the digits config's network

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch), batch['label'])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope='module')
def lightning_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Lightning checkpoint of `Holder`, trained for a few steps by Lightning itself."""
    from datasets.digits import Digits
    folder = tmp_path_factory.mktemp('elsewhere')
    trainer = pl.Trainer(max_steps=3, accelerator='cpu', logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    trainer.fit(Holder(), DataLoader(Digits('train'), batch_size=32))
    trainer.save_checkpoint(folder / 'holder.ckpt')
    return folder / 'holder.ckpt'


def one_line(err: str) -> str:
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    return err.rstrip('\n')


@pytest.mark.parametrize('entry', RUNNERS)
@pytest.mark.parametrize('layout', ['plain', 'state_dict'])
def test_a_saved_state_dict_loads_with_a_prefix_and_says_which_without_one(
        entry: str, layout: str, trained: dict, save_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / 'mlp.pt'
    torch.save(trained if layout == 'plain' else {'state_dict': trained}, file)
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, '--name', 'as-is', *FAST, '--init-from', str(file)) == 2
    assert one_line(capsys.readouterr().err) == (
        f'error: --init-from {file}: missing in the checkpoint: model.net.0.weight, model.net.0.bias, '
        f'model.net.3.weight, model.net.3.bias; not in the model: net.0.weight, net.0.bias, net.3.weight, '
        f'net.3.bias; the config key init_from: {{add_prefix: model.}} maps every name')
    assert not save_root.exists()
    assert run(save_root, '--config', DIGITS, '--name', 'mapped', *FAST, *FROZEN, '--init-from', str(file),
               'init_from.add_prefix=model.') == 0
    loaded = weights(save_root / 'mapped')
    assert loaded.keys() == {f'model.{k}' for k in trained}
    assert all(torch.equal(loaded[f'model.{k}'], v) for k, v in trained.items())


@pytest.mark.parametrize('entry', RUNNERS)
def test_a_lightning_checkpoint_holding_the_network_elsewhere_loads_with_both_prefixes(
        entry: str, lightning_checkpoint: Path, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    run = RUNNERS[entry]
    assert run(save_root, '--config', DIGITS, *FAST, '--init-from', str(lightning_checkpoint)) == 2
    assert one_line(capsys.readouterr().err).endswith(
        '; the config key init_from: {strip_prefix: net., add_prefix: model.} maps every name')
    assert run(save_root, '--config', DIGITS, '--name', 'mapped', *FAST, *FROZEN,
               '--init-from', str(lightning_checkpoint), 'init_from.strip_prefix=net.',
               'init_from.add_prefix=model.') == 0
    theirs = torch.load(lightning_checkpoint, weights_only=True)['state_dict']
    loaded = weights(save_root / 'mapped')
    assert all(torch.equal(loaded['model.' + k.removeprefix('net.')], v) for k, v in theirs.items())


@pytest.mark.parametrize('entry', RUNNERS)
def test_weights_that_no_prefix_matches_are_one_line_naming_them(entry: str, save_root: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / 'other.pt'
    torch.save(nn.Sequential(nn.Linear(64, 16), nn.Linear(16, 10)).state_dict(), file)
    assert RUNNERS[entry](save_root, '--config', DIGITS, *FAST, '--init-from', str(file),
                          'init_from.add_prefix=model.') == 2
    assert one_line(capsys.readouterr().err) == (
        f'error: --init-from {file}: missing in the checkpoint: model.net.0.weight, model.net.0.bias, '
        f'model.net.3.weight, model.net.3.bias; not in the model: model.0.weight, model.0.bias, model.1.weight, '
        f'model.1.bias')
    assert not save_root.exists()


NOT_WEIGHTS = {
    'a list': ([1, 2, 3], '{file} holds no weights (a state_dict, a {{state_dict: ...}} file or a Lightning '
                          'checkpoint), but a list'),
    'an empty dict': ({}, '{file} holds no weights (a state_dict, a {{state_dict: ...}} file or a Lightning '
                          'checkpoint), but a dict'),
    'numbers': ({'net.0.weight': 3}, "{file} is not a lightyaml/Lightning checkpoint (it holds a int at "
                                     "'net.0.weight', not a tensor)"),
    "a 'model' of strings": ({'model': {'net.0.weight': 'x'}},
                             "{file} is not a lightyaml/Lightning checkpoint (its model holds a str at 'net.0.weight', "
                             "not a tensor)"),
}


@pytest.mark.parametrize('case', NOT_WEIGHTS)
def test_a_file_without_weights_is_one_line(case: str, save_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    content, problem = NOT_WEIGHTS[case]
    file = tmp_path / 'x.pt'
    torch.save(content, file)
    for run in RUNNERS.values():
        assert run(save_root, '--config', DIGITS, *FAST, '--init-from', str(file)) == 2
        assert one_line(capsys.readouterr().err) == f'error: --init-from {file}: {problem.format(file=file)}'
    assert not save_root.exists()


@pytest.mark.parametrize('override, problem', [
    ('init_from.add=model.', "init_from.add: the init_from section has no key 'add'; keys: strip_prefix, add_prefix"),
    ('init_from.strip_prefixx=net.', "init_from.strip_prefixx: the init_from section has no key 'strip_prefixx' "
                                     "(did you mean 'strip_prefix' or 'add_prefix'?); keys: strip_prefix, add_prefix"),
    ('init_from.add_prefix=3', "init_from.add_prefix: expected a prefix of weight names such as 'model.', got 3"),
])
def test_the_init_from_section_is_checked(override: str, problem: str, save_root: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    for run in RUNNERS.values():
        assert run(save_root, '--config', DIGITS, *FAST, override) == 2
        assert one_line(capsys.readouterr().err) == f"error: override '{override}': {problem}"
    assert not save_root.exists()
