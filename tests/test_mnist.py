"""The MNIST path on small generated IDX files (MNIST itself cannot be downloaded here)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_pl
from utils import DATASETS


def write_fake_mnist(root: Path, n_train: int = 600, n_test: int = 100, gz: bool = False) -> None:
    """IDX files whose images carry their label as a bright bar in row 2 * label."""
    raw = root / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        labels = torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8)
        images = (torch.rand(n, 28, 28, generator=generator) * 60).to(torch.uint8)
        images[torch.arange(n), 2 * labels.long() + 4, 4:24] = 255
        files = {f'{prefix}-images-idx3-ubyte': struct.pack('>IIII', 2051, n, 28, 28) + images.numpy().tobytes(),
                 f'{prefix}-labels-idx1-ubyte': struct.pack('>II', 2049, n) + labels.numpy().tobytes()}
        for name, data in files.items():
            if gz:
                with gzip.open(raw / f'{name}.gz', 'wb') as f:
                    f.write(data)
            else:
                (raw / name).write_bytes(data)


def test_mnist_reads_idx_files_into_normalised_tensors_with_a_seeded_split(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, gz=True)  # gzipped, as when fetched by hand
    train = DATASETS.make({'name': 'mnist', 'args': {'root': str(tmp_path), 'split': 'train', 'val_size': 100}})
    val = DATASETS.make({'name': 'mnist', 'args': {'root': str(tmp_path), 'split': 'val', 'val_size': 100}})
    test = DATASETS.make({'name': 'mnist', 'args': {'root': str(tmp_path), 'split': 'test'}})
    assert (len(train), len(val), len(test)) == (500, 100, 100)
    sample = train[0]
    assert sample['image'].shape == (1, 28, 28) and sample['image'].dtype == torch.float32
    assert sample['image'].max().item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)
    assert int(sample['image'][0, 2 * sample['label'] + 4, 10] > 2)  # the bar is where the label says
    seen = {tuple(t.flatten()[:50].tolist()) for t in train.tensors['image']}
    assert not any(tuple(t.flatten()[:50].tolist()) in seen for t in val.tensors['image'])


def test_missing_mnist_files_name_the_folder_and_files(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = [f'data_module.args.{s}.args.root={tmp_path}' for s in ('train', 'val', 'test')]
    args += [f'data_module.args.{s}.args.download=false' for s in ('train', 'val', 'test')]
    assert run_pl(tmp_path / 'save', '--config', str(ROOT / 'configs' / 'mnist.yaml'), *args) == 2
    raw = tmp_path / 'MNIST' / 'raw'
    assert capsys.readouterr().err == (
        f"error: override 'data_module.args.train.args.download=false': data_module.args.train: "
        f"building the data loaders failed: "
        f'FileNotFoundError: MNIST files missing in {raw} (download: false): put train-images-idx3-ubyte, '
        f'train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or their .gz files) there '
        f"(with root='{tmp_path}', split='train', download=False)\n")
    assert not (tmp_path / 'save').exists()


def test_mnist_config_trains_lenet5_on_idx_files(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    args = [f'data_module.args.{s}.args.root={tmp_path}' for s in ('train', 'val', 'test')]
    args += ['data_module.args.train.args.val_size=100', 'data_module.args.val.args.val_size=100',
             'data_module.args.batch_size=16', 'trainer_params.max_epochs=3']
    save_root = tmp_path / 'save'
    assert run_pl(save_root, '--config', str(ROOT / 'configs' / 'mnist.yaml'), *args) == 0
    last = [line for line in (save_root / 'mnist' / 'log.txt').read_text().splitlines() if line.startswith('epoch')][-1]
    assert last.startswith('epoch 3/3')
    assert float(last.split('val: acc ')[1].split()[0]) > 0.9  # the bar is easy to learn
