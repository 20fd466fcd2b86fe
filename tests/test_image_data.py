"""Real image data: labelled image folders, transforms from YAML (per image, or per batch on the
device for in-memory data), CIFAR-10 from its files, and several named validation sets."""
from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import DIGITS, ROOT, RUNNERS, run_pl, run_py
from utils import display_path

CIFAR = str(ROOT / 'configs' / 'cifar10.yaml')
DIGITS_PNG = str(ROOT / 'configs' / 'digits-png.yaml')
NAMED_VAL = ('data_module.args.val={clean: {name: digits, args: {split: val}}, '
             'flipped: {name: digits, args: {split: val, transforms: [{name: RandomHorizontalFlip, args: {p: 1.0}}]}}}')


@pytest.fixture(scope='module')
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worked example's folder (datasets/make_image_folder.py), at the digits' own 8x8 pixels."""
    from datasets.make_image_folder import write_image_folder
    root = tmp_path_factory.mktemp('digits_png')
    assert write_image_folder(root, size=8) == {'train': 1257, 'val': 270, 'test': 250, 'new': 20}
    return root


def folder_overrides(root: Path) -> list[str]:
    """configs/digits-png.yaml on `root`, shrunk: an MLP on 8x8 images, 4 epochs, no workers."""
    return [f'data_module.args.train.args.root={root}/train', f'data_module.args.val.args.root={root}/val',
            f'data_module.args.test.args.root={root}/test', 'data_module.args.num_workers=0',
            'train_wrapper.args.model_spec={name: mlp, args: {in_dim: 64, hidden: [256], out_dim: 10}}',
            'data_module.args.train.args.transforms=[{name: RandomAffine, args: {degrees: 5}}]',
            'trainer_params.max_epochs=4', 'train_wrapper.args.scheduler_spec.args.T_max=4']


@pytest.mark.parametrize('runner', ['train.py', 'train_pl.py'])
def test_an_image_folder_trains_and_predicts_class_names(runner: str, digit_pngs: Path, save_root: Path) -> None:
    run = RUNNERS[runner]
    assert run(save_root, '--config', DIGITS_PNG, '--name', 'png', *folder_overrides(digit_pngs)) == 0
    exp = save_root / 'png'
    names = ['eight', 'five', 'four', 'nine', 'one', 'seven', 'six', 'three', 'two', 'zero']   # folders by name
    assert yaml.safe_load((exp / 'classes.yaml').read_text()) == names
    result = yaml.safe_load((exp / 'result.yaml').read_text())
    assert result['final']['val/acc'] > 0.85
    assert run(save_root, '--predict', str(exp), '--data', str(digit_pngs / 'new')) == 0
    with open(exp / 'predictions.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    with open(digit_pngs / 'new_labels.csv', newline='') as f:
        truth = {row['file']: row['class'] for row in csv.DictReader(f)}
    assert list(rows[0]) == ['index', 'file', 'pred', 'class', 'prob'] and len(rows) == 20
    assert all(names[int(r['pred'])] == r['class'] for r in rows)
    correct = sum(truth[Path(r['file']).name] == r['class'] for r in rows)
    assert correct >= 15, rows


def test_the_folder_loader_uses_workers_and_torchvisions_labels(digit_pngs: Path) -> None:
    from torchvision.datasets import ImageFolder

    from datasets.data_module import DataModule
    data = DataModule(train={'name': 'labelled_images', 'args': {'root': str(digit_pngs / 'val'), 'channels': 1}},
                      batch_size=64, num_workers=2)
    loader = data.train_dataloader()
    assert (loader.num_workers == 2 and loader.persistent_workers
            and data.classes == ImageFolder(digit_pngs / 'val').classes)
    reference = ImageFolder(digit_pngs / 'val')
    dataset = data.dataset('train')
    assert [Path(f).name for f in dataset.files] == [Path(p).name for p, _ in reference.samples]
    assert dataset.labels.tolist() == [label for _, label in reference.samples]
    images = torch.cat([b['image'] for b in loader])
    assert images.shape == (270, 1, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1


BAD_TRANSFORMS = [
    ('[{name: RandomCrp, args: {size: 8}}]', "data_module.args.train.args.transforms.0.name: unknown transform "
     "'RandomCrp' (did you mean 'RandomCrop' or 'RandomIoUCrop' or 'RandomOrder'?); registered: AugMix, "),
    ('[{name: RandomCrop, args: {sise: 8}}]', "data_module.args.train.args.transforms.0.args.sise: transform "
     "'RandomCrop' does not take 'sise' (did you mean 'size'?)"),
    ('[{name: RandomCrop, args: {size: 8, padding: one}}]', 'data_module.args.train.args.transforms.0.args.padding: '
     "expected int or Sequence or None, got str 'one'"),
    ('[{name: RandomChoice, args: {transforms: [{name: MixUp}, {name: CutMx}]}}]',
     "data_module.args.train.args.transforms.0.args.transforms.1.name: unknown transform 'CutMx' (did you mean "
     "'CutMix'?)"),
    ('[{name: ColorJitter, args: {brightness: 0.2}}]', 'data_module.args.train.args.transforms.0.name: ColorJitter is '
     'not applied to in-memory data, which is augmented batch by batch on its device; it takes RandomHorizontalFlip, '),
]


@pytest.mark.parametrize('transforms, message', BAD_TRANSFORMS)
def test_transforms_are_checked_against_torchvision_before_anything_is_built(
        transforms: str, message: str, save_root: Path, capsys: pytest.CaptureFixture) -> None:
    override = f'data_module.args.train.args.transforms={transforms}'
    assert run_py(save_root, '--config', DIGITS, override) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: override '{override}': {message}") and err.count('\n') == 1, err
    assert not save_root.exists()


def test_mixup_is_refused_where_images_come_one_by_one(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    override = 'data_module.args.train.args.transforms=[{name: MixUp, args: {num_classes: 10}}]'
    assert run_pl(save_root, '--config', DIGITS_PNG, override) == 2
    assert capsys.readouterr().err == (
        f"error: override '{override}': data_module.args.train.args.transforms.0.name: MixUp mixes the images of a "
        f"batch; a dataset loaded file by file transforms one image at a time (use it on in-memory data)\n")
    assert not save_root.exists()


# ------------------------------------------------------------------- batch augmentation, fast path

def augmented_batches(transforms: list, seed: int = 0, disturb: bool = False) -> list[dict]:
    """One epoch of digits batches through the fast path with `transforms`; `disturb` draws from
    the global generator between batches (as dropout does, or Lightning fetching ahead)."""
    from datasets.data_module import BatchLoader, DataModule
    loader = DataModule(train={'name': 'digits', 'args': {'transforms': transforms}}, batch_size=64).train_dataloader()
    assert isinstance(loader, BatchLoader)
    torch.manual_seed(seed)
    batches = []
    for batch in loader:
        batches.append(batch)
        if disturb:
            torch.rand(100)
    return batches


def test_flips_and_crops_are_drawn_per_image_on_the_fast_path() -> None:
    from datasets.digits import Digits
    images = Digits('train').tensors['image']
    torch.manual_seed(0)
    plain = augmented_batches([])
    flipped = augmented_batches([{'name': 'RandomHorizontalFlip'}])
    for a, b in zip(plain, flipped):
        same = (a['image'] == b['image']).flatten(1).all(1)
        mirrored = (a['image'].flip(-1) == b['image']).flatten(1).all(1)
        assert torch.equal(a['label'], b['label']) and bool((same | mirrored).all())
    share = torch.cat([(a['image'] != b['image']).flatten(1).any(1) for a, b in zip(plain, flipped)]).float().mean()
    assert 0.35 < float(share) < 0.65   # about half the images, not all or none of a batch
    cropped = augmented_batches([{'name': 'RandomCrop', 'args': {'size': 8, 'padding': 2}}])
    offsets = set()
    for a, b in zip(plain, cropped):
        padded = torch.nn.functional.pad(a['image'], (2, 2, 2, 2))
        for original, crop in zip(padded, b['image']):
            found = [(dy, dx) for dy in range(5) for dx in range(5)
                     if torch.equal(original[:, dy:dy + 8, dx:dx + 8], crop)]
            assert found, 'every crop is a window of its padded image'
            offsets.add(found[0])
    assert len(offsets) > 15 and images.shape[1:] == plain[0]['image'].shape[1:]


def test_augmentation_draws_do_not_depend_on_other_draws_between_batches() -> None:
    transforms = [{'name': 'RandomCrop', 'args': {'size': 8, 'padding': 1}}, {'name': 'RandomHorizontalFlip'},
                  {'name': 'MixUp', 'args': {'num_classes': 10}}]
    quiet, busy = augmented_batches(transforms), augmented_batches(transforms, disturb=True)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(quiet, busy) for k in a)
    assert not torch.equal(quiet[0]['image'], augmented_batches(transforms, seed=1)[0]['image'])


def test_mixup_gives_soft_labels_the_loss_takes_and_metrics_read_as_classes(save_root: Path) -> None:
    batches = augmented_batches([{'name': 'MixUp', 'args': {'num_classes': 10}}])
    labels = batches[0]['label']
    assert labels.shape == (64, 10) and torch.allclose(labels.sum(1), torch.ones(64))
    assert run_py(save_root, '--config', DIGITS, '--name', 'mix', 'trainer_params.max_epochs=3',
                  'data_module.args.train.args.transforms=[{name: RandomChoice, args: {transforms: '
                  '[{name: MixUp, args: {num_classes: 10}}, {name: CutMix, args: {num_classes: 10}}]}}]',
                  'train_wrapper.args.train_metrics=true') == 0
    with open(save_root / 'mix' / 'metrics.csv', newline='') as f:
        last = [r for r in csv.DictReader(f) if r['val/acc']][-1]
    assert float(last['val/acc']) > 0.8 and 0.3 < float(last['train/acc']) <= 1.0


# ------------------------------------------------------------------------------------------ CIFAR-10

NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def write_fake_cifar(root: Path, per_batch: int = 8) -> Path:
    """Small files in the official archive's format (pickled dicts of NumPy arrays)."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        batch = {'batch_label': name, 'labels': rng.integers(0, 10, per_batch).tolist(),
                 'data': rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 'filenames': [f'{i}.png' for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': NAMES, 'num_cases_per_batch': per_batch}))
    return root


@pytest.mark.parametrize('runner', ['train.py', 'train_pl.py'])
def test_the_cifar10_config_trains_on_files_in_torchvisions_format(runner: str, tmp_path: Path,
                                                                   save_root: Path) -> None:
    root = write_fake_cifar(tmp_path / 'cifar10')
    shrink = [f'data_module.args.{split}.args.root={root}' for split in ('train', 'val', 'test')]
    shrink += ['data_module.args.device=null', 'trainer_params.accelerator=cpu', 'trainer_params.max_epochs=1',
               'data_module.args.batch_size=20', 'data_module.args.eval_batch_size=8']
    assert RUNNERS[runner](save_root, '--config', CIFAR, '--name', 'c', *shrink) == 0
    exp = save_root / 'c'
    assert yaml.safe_load((exp / 'classes.yaml').read_text()) == NAMES
    result = yaml.safe_load((exp / 'result.yaml').read_text())['final']
    assert np.isfinite(result['train/loss']) and 0 <= result['val/acc'] <= 1
    with open(exp / 'metrics.csv', newline='') as f:
        assert [int(r['step']) for r in csv.DictReader(f) if r['val/acc']] == [1]   # 40 images, 20 a batch: 2 steps

    from datasets.cifar10 import CIFAR10
    train, test = CIFAR10(str(root), 'train'), CIFAR10(str(root), 'test')
    assert train.tensors['image'].shape == (40, 3, 32, 32) and len(test) == 8 and train.classes == NAMES
    first = pickle.loads((root / 'cifar-10-batches-py' / 'data_batch_1').read_bytes())
    assert torch.equal(train.tensors['image'][0], torch.tensor(first['data'][0]).reshape(3, 32, 32).float() / 255)
    assert train.tensors['label'][:8].tolist() == first['labels']


def test_missing_cifar10_files_are_one_clear_error(tmp_path: Path, save_root: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / 'nowhere'
    args = [f'data_module.args.{split}.args.root={root}' for split in ('train', 'val', 'test')]
    assert run_py(save_root, '--config', CIFAR, 'data_module.args.device=null', 'trainer_params.accelerator=cpu',
                  *args) == 2
    files = 'data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta'
    assert capsys.readouterr().err == (
        f"error: override '{args[0]}': data_module.args.train: building the data loaders failed: FileNotFoundError: "
        f'CIFAR-10 files missing in {display_path(root)}/cifar-10-batches-py: {files}; unpack '
        f'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {display_path(root)} (it holds '
        f"cifar-10-batches-py/ with {files}), or set download: true (with split='train', root='{root}')\n")
    assert not save_root.exists()


def test_cifar10_files_that_unpickle_anything_but_arrays_are_refused(tmp_path: Path) -> None:
    from datasets.cifar10 import read_batch

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ('this ran',))

    (tmp_path / 'data_batch_1').write_bytes(pickle.dumps({'data': Evil()}))
    with pytest.raises(pickle.UnpicklingError, match='builtins.print is not allowed in a CIFAR-10 file'):
        read_batch(tmp_path / 'data_batch_1')


# ---------------------------------------------------------------------------- several validation sets

VAL_LINE = re.compile(r'^epoch \d+/3  train: loss \d\.\d{4}  val/clean: acc (\d\.\d{4}) loss \d\.\d{4} top3 \d\.\d{4}  '
                      r'val/flipped: acc (\d\.\d{4}) loss \d\.\d{4} top3 \d\.\d{4}  \d+\.\ds, \w+ / ~\w+$')


def test_several_validation_sets_are_logged_and_monitored_alike_in_both_entry_points(save_root: Path) -> None:
    args = ['--config', DIGITS, NAMED_VAL, 'trainer_params.max_epochs=3', 'checkpoint.monitor=val/flipped/acc',
            'train_wrapper.args.scheduler_spec={name: ReduceLROnPlateau, args: {patience: 0, factor: 0.5}, '
            'monitor: val/clean/loss}']
    assert run_py(save_root, '--name', 'py', *args) == 0 and run_pl(save_root, '--name', 'pl', *args) == 0
    logs = {}
    for name in ('py', 'pl'):
        exp = save_root / name
        lines = [m for m in map(VAL_LINE.match, (exp / 'log.txt').read_text().splitlines()) if m]
        assert len(lines) == 3
        with open(exp / 'metrics.csv', newline='') as f:
            rows = [r for r in csv.DictReader(f) if r['val/clean/acc']]
        assert {'val/clean/acc', 'val/clean/loss', 'val/flipped/acc', 'val/flipped/top3'} <= set(rows[0])
        assert 'val/acc' not in rows[0] and not any(k.endswith('dataloader_idx_0') for k in rows[0])
        flipped = [float(r['val/flipped/acc']) for r in rows]
        assert [float(m[2]) for m in lines] == pytest.approx(flipped, abs=1e-4)
        # Mirrored digits are harder.
        assert float(rows[-1]['val/clean/acc']) > 0.9 > float(rows[-1]['val/flipped/acc'])
        best = yaml.safe_load((exp / 'result.yaml').read_text())['best']
        assert best['monitor'] == 'val/flipped/acc' and best['value'] == pytest.approx(max(flipped), abs=1e-6)
        logs[name] = torch.load(exp / 'ckpt' / 'last.ckpt', weights_only=True)
        # The scheduler stepped on the named set's loss (the lowest it saw by the checkpoint).
        plateau_best = logs[name]['lr_schedulers'][0]['best']
        assert any(plateau_best == pytest.approx(float(r['val/clean/loss']), abs=1e-6) for r in rows)
    a, b = logs['py']['state_dict'], logs['pl']['state_dict']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # the same run, bit for bit


def test_a_bad_named_validation_set_is_one_line(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    override = 'data_module.args.val={clean: {name: digts}}'
    assert run_pl(save_root, '--config', DIGITS, override) == 2
    assert capsys.readouterr().err.startswith(
        f"error: override '{override}': data_module.args.val.clean.name: unknown dataset 'digts' "
        "(did you mean 'digits'")
    assert not save_root.exists()
