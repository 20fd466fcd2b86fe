"""The `gan` wrapper end to end on the digits: sample grids, logged terms, the adversarial game, resume."""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_pl

GAN = str(ROOT / 'configs' / 'digits-gan.yaml')
# 40 of the config's 100 epochs (about 6 s): enough for the generator to catch up with the
# discriminator. Over seeds 0-7 the last epochs' val/d_acc was 0.49-0.62; after 20 epochs, up to 0.67.
EPOCHS = 40
SHORT = [f'trainer_params.max_epochs={EPOCHS}', f'train_wrapper.args.g_scheduler_spec.args.T_max={EPOCHS}',
         f'train_wrapper.args.d_scheduler_spec.args.T_max={EPOCHS}']
GRID_SIDE = 8 * (8 * 4) + 9 * 2   # 8 samples a row, 8x8 pixels zoomed 4 times, 2 pixels of padding
TERMS = r'd_acc (\d\.\d{4}) d_loss (\d+\.\d{4}) g_loss (\d+\.\d{4})'
EPOCH_LINE = re.compile(rf'^epoch (\d+)/(\d+)  train: {TERMS}  val: {TERMS}  \d+\.\ds, \w+ / ~\w+$')


def epoch_values(exp: Path, key: str) -> list[float]:
    """One value per epoch of `key` from metrics.csv."""
    with open(exp / 'metrics.csv') as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.fixture(scope='module', autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for these tiny networks: faster than two threads on a busy machine, and the
    numbers (which thread count changes in the last bits, and a GAN amplifies) the same everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GAN config, shortened, trained once for this module; its experiment folder."""
    save_root = tmp_path_factory.mktemp('save')
    assert run_pl(save_root, '--config', GAN, *SHORT) == 0
    return save_root / 'digits-gan'


def test_a_grid_of_samples_is_saved_every_epoch(gan_run: Path) -> None:
    from PIL import Image
    grids = sorted((gan_run / 'samples').iterdir())
    assert [p.name for p in grids] == [f'epoch_{epoch:03d}.png' for epoch in range(1, EPOCHS + 1)]
    for path in grids:
        with Image.open(path) as image:
            assert (image.format, image.size) == ('PNG', (GRID_SIDE, GRID_SIDE))
            image.verify()
    assert grids[0].read_bytes() != grids[-1].read_bytes()   # the same noise, a better generator


def test_log_has_one_line_per_epoch_with_the_gan_terms(gan_run: Path) -> None:
    lines = (gan_run / 'log.txt').read_text().splitlines()
    assert lines[0].startswith('command: python train_pl.py --config')
    assert lines[1] == 'parameters: 104,129 total (generator 54,464, discriminator 49,665)'
    epoch_lines = [line for line in lines if line.startswith('epoch ')]
    epochs = [EPOCH_LINE.match(line) for line in epoch_lines]
    assert all(epochs), epoch_lines
    assert [int(m[1]) for m in epochs] == list(range(1, EPOCHS + 1))
    assert float(epochs[-1][6]) == pytest.approx(epoch_values(gan_run, 'val/d_acc')[-1], abs=1e-4)


def test_the_discriminator_wins_first_then_the_generator_catches_up(gan_run: Path) -> None:
    val_acc, train_acc = epoch_values(gan_run, 'val/d_acc'), epoch_values(gan_run, 'train/d_acc')
    assert len(val_acc) == len(train_acc) == EPOCHS
    # The first epochs' samples are noise, easy to tell from digits (seen: 0.80-0.93 over 8 seeds).
    assert max(val_acc[:3]) > 0.75 and max(train_acc[:3]) > 0.7
    # Then the game comes back towards chance (seen: val 0.49-0.62, train 0.52-0.59).
    assert 0.3 < sum(val_acc[-3:]) / 3 < 0.7
    assert 0.35 < sum(train_acc[-3:]) / 3 < 0.65
    # No divergence: every loss finite and bounded (seen at most 1.55), and at the end the
    # discriminator's loss near ln 2, that of a coin flip (seen 0.65-0.69).
    for key in ('train/d_loss', 'train/g_loss', 'val/d_loss', 'val/g_loss'):
        values = epoch_values(gan_run, key)
        assert len(values) == EPOCHS and all(math.isfinite(v) and 0 < v < 2.0 for v in values), (key, values)
    assert abs(epoch_values(gan_run, 'train/d_loss')[-1] - math.log(2)) < 0.1
    assert epoch_values(gan_run, 'train/g_loss')[-1] < 1.1


def test_the_generator_draws_every_digit(gan_run: Path) -> None:
    """Each sample's nearest training digit (98.5% right on val digits) covers all ten classes: no
    mode collapse. Seen: at least 24 of each in 1000 over 8 seeds; without batch norm, not one 7."""
    from sklearn.neighbors import KNeighborsClassifier

    from models.wrappers.gan import GANWrapper
    from utils import DATASETS
    digits = DATASETS.make({'name': 'digits', 'args': {'split': 'train'}}).tensors
    classifier = KNeighborsClassifier(n_neighbors=1).fit(digits['image'].flatten(1).numpy(), digits['label'].numpy())
    wrapper = GANWrapper.load_from_checkpoint(gan_run / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)
    wrapper.eval()
    with torch.no_grad():
        images = wrapper.generator({'z': torch.randn(1000, 32, generator=torch.Generator().manual_seed(0))})
    counts = torch.bincount(torch.as_tensor(classifier.predict(images.flatten(1).numpy())), minlength=10)
    assert counts.min() >= 10, counts.tolist()


def test_resume_continues_both_optimizers_and_schedulers(save_root: Path) -> None:
    quick = ['trainer_params.limit_train_batches=5']
    assert run_pl(save_root, '--config', GAN, '--name', 'gan', 'trainer_params.max_epochs=2', *quick) == 0
    exp = save_root / 'gan'
    assert run_pl(save_root, '--resume', str(exp), 'trainer_params.max_epochs=3') == 0
    log = (exp / 'log.txt').read_text().splitlines()
    assert [line.split()[1] for line in log if line.startswith('epoch ')] == ['1/2', '2/2', '3/3']
    assert sorted(p.name for p in (exp / 'samples').iterdir()) == ['epoch_001.png', 'epoch_002.png', 'epoch_003.png']
    state = torch.load(exp / 'ckpt' / 'last.ckpt', map_location='cpu', weights_only=True)
    assert state['global_step'] == 2 * 3 * 5   # two optimizer steps per batch
    # Adam's step counts went on from the first session's 10: both optimizer states were restored.
    assert [float(s['state'][0]['step']) for s in state['optimizer_states']] == [15.0, 15.0]
    assert [s['last_epoch'] for s in state['lr_schedulers']] == [3, 3]


def test_a_loss_gone_nan_stops_the_run_with_a_message(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    exploding = [f'train_wrapper.args.{net}_optim_spec.args.lr=1e30' for net in ('g', 'd')]
    assert run_pl(save_root, '--config', GAN, *exploding, 'trainer_params.limit_train_batches=5') == 1
    assert capsys.readouterr().err.endswith(
        'error: non-finite training loss in epoch 1 (between steps 0 and 9): d_loss, g_loss became NaN or '
        'infinite; training stopped before any checkpoint was saved (nothing to resume; fix the cause and start '
        'again with --overwrite)\n')   # a NaN in the first epoch: no checkpoint to claim
