"""The fast paths (batches by index, data on the device) and the GPU-ready options, on CPU."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from conftest import DIGITS, ROOT, run_pl, run_py
from datasets.data_module import BatchLoader, DataModule
from datasets.digits import Digits
from lightyaml.train.task import Task

TRAIN, VAL = {'name': 'digits'}, {'name': 'digits', 'args': {'split': 'val'}}


def epoch(loader: object, seed: int) -> tuple[list[dict], torch.Tensor]:
    """One epoch of batches from a fresh seed, and the global RNG state after it."""
    torch.manual_seed(seed)
    return list(loader), torch.random.get_rng_state()


@pytest.mark.parametrize('stage, drop_last', [('train', False), ('train', True), ('val', False)])
def test_batches_by_index_are_the_per_sample_dataloaders_batches(stage: str, drop_last: bool) -> None:
    fast = DataModule(train=TRAIN, val=VAL, batch_size=32, drop_last=drop_last).loader(stage)
    slow = DataModule(train=TRAIN, val=VAL, batch_size=32, drop_last=drop_last, batch_by_index=False).loader(stage)
    assert isinstance(fast, BatchLoader) and isinstance(slow, DataLoader)
    assert len(fast) == len(slow)
    (fast_batches, fast_rng), (slow_batches, slow_rng) = epoch(fast, 3), epoch(slow, 3)
    assert len(fast_batches) == len(slow_batches) == len(fast)
    for a, b in zip(fast_batches, slow_batches):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The same draws from the global generator, so dropout after it is the same too.
    assert torch.equal(fast_rng, slow_rng)


def test_a_dataset_with_its_own_getitem_is_loaded_sample_by_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets.tensor_dict import serves_batches
    from utils import DATASETS

    class Flipped(Digits):
        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            item = super().__getitem__(index)
            return {**item, 'image': item['image'].flip(-1)}   # per-sample work a batch by index would skip

    assert serves_batches(Digits()) and not serves_batches(Flipped())
    monkeypatch.setitem(DATASETS._classes, 'flipped_digits', Flipped)
    assert isinstance(DataModule(train={'name': 'flipped_digits'}).train_dataloader(), DataLoader)


def test_loader_defaults_suit_the_device() -> None:
    workers = DataModule(train=TRAIN, num_workers=2, batch_by_index=False).train_dataloader()
    assert workers.persistent_workers and workers.pin_memory == torch.cuda.is_available()
    assert not DataModule(train=TRAIN, batch_by_index=False).train_dataloader().persistent_workers
    assert DataModule(train=TRAIN).train_dataloader().pin_memory == torch.cuda.is_available()
    on_device = DataModule(train=TRAIN, device='cpu', pin_memory=True).train_dataloader()
    assert not on_device.pin_memory   # data already on its device is never pinned


def test_under_ddp_set_epoch_reaches_the_distributed_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 2)
    images = Digits('train').tensors['image']
    covered = set()
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, 'get_rank', lambda rank=rank: rank)
        loader = DataModule(train=TRAIN, batch_size=32).train_dataloader()
        assert isinstance(loader, BatchLoader) and isinstance(loader.sampler, DistributedSampler)
        assert len(loader) == math.ceil(len(loader.sampler) / 32)
        orders = []
        for e in (0, 1):
            loader.sampler.set_epoch(e)   # what train.py and Lightning call each epoch
            orders.append(list(loader.sampler))
            assert torch.equal(torch.cat([b['image'] for b in loader]), images[orders[-1]])
        assert orders[0] != orders[1]
        covered |= set(orders[0])
    assert covered == set(range(len(images)))


def last_weights(save_root: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(save_root / name / 'ckpt' / 'last.ckpt', weights_only=True)['state_dict']


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), (k, (a[k] - b[k]).abs().max())


def test_fast_path_and_data_on_the_device_train_the_same_weights_as_the_per_sample_path(save_root: Path) -> None:
    # digits.yaml has dropout: the masks come from the global RNG, so this also checks its draws.
    short = ['trainer_params.max_epochs=2']
    assert run_py(save_root, '--config', DIGITS, '--name', 'fast', *short) == 0
    assert run_py(save_root, '--config', DIGITS, '--name', 'per_sample', 'data_module.args.batch_by_index=false',
                  *short) == 0
    assert run_pl(save_root, '--config', DIGITS, '--name', 'on_device', 'data_module.args.device=cpu', *short) == 0
    per_sample = last_weights(save_root, 'per_sample')
    assert_same_weights(last_weights(save_root, 'fast'), per_sample)
    assert_same_weights(last_weights(save_root, 'on_device'), per_sample)


def test_device_needs_an_in_memory_dataset(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_py(save_root, '--config', DIGITS, 'data_module.args.device=cpu',
                  'data_module.args.batch_by_index=false') == 2
    assert "device: 'cpu' needs in-memory datasets served by index" in capsys.readouterr().err


def train_a_few_steps(model: str, steps: int = 3, **options: bool) -> Task:
    """A Task on digits after a few SGD steps on fixed batches, from seed 0."""
    torch.manual_seed(0)
    task = Task({'name': model}, {'name': 'ce'}, {'name': 'SGD', 'args': {'lr': 0.1}}, **options)
    optimizer = task.configure_optimizers()['optimizer']
    data = Digits('train')
    for step in range(steps):
        _, terms = task.step(data[torch.arange(step * 32, step * 32 + 32)], 'train')
        optimizer.zero_grad()
        terms['loss'].backward()
        optimizer.step()
    return task


def test_channels_last_matches_the_default_layout() -> None:
    reference, nhwc = train_a_few_steps('lenet5'), train_a_few_steps('lenet5', channels_last=True)
    conv = nhwc.model.features[3].weight   # (16, 6, 5, 5): NCHW and NHWC differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert_same_weights(nhwc.state_dict(), reference.state_dict(), atol=1e-5)


def test_compile_matches_eager_and_keeps_the_parameter_names() -> None:
    reference, compiled = train_a_few_steps('mlp'), train_a_few_steps('mlp', compile=True)
    assert_same_weights(compiled.state_dict(), reference.state_dict(), atol=1e-5)


def val_acc(exp: Path) -> float:
    """The last val/acc in an experiment's metrics.csv."""
    with open(exp / 'metrics.csv') as f:
        return [float(r['val/acc']) for r in csv.DictReader(f) if r.get('val/acc')][-1]


def test_bf16_mixed_precision_runs_in_both_entry_points(save_root: Path) -> None:
    # The same autocast in both; bf16 keeps 8 bits of mantissa, so only close, not equal, to float32.
    args = ['--config', DIGITS, 'trainer_params.max_epochs=2', 'trainer_params.precision=bf16-mixed']
    assert run_py(save_root, *args, '--name', 'py') == 0
    assert run_pl(save_root, *args, '--name', 'pl') == 0
    assert val_acc(save_root / 'py') > 0.9 and val_acc(save_root / 'pl') > 0.9
    assert_same_weights(last_weights(save_root, 'py'), last_weights(save_root, 'pl'), atol=1e-2)


class HookWatch:
    """A callback (registered for one test) that counts the batch hooks it overrides and notes,
    once training runs, which batch hooks Lightning would skip and what the environment says."""
    seen: dict = {}

    @classmethod
    def make(cls) -> type:
        import pytorch_lightning as pl

        from callbacks.fast_paths import BATCH_HOOKS, NVML_CHECK

        class Watch(pl.Callback):
            def __init__(self) -> None:
                self.after_backward = self.zero_grad = 0
                self.on_before_zero_grad = self.count_zero_grad   # a hook set on the instance

            def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                self.after_backward += 1

            def count_zero_grad(self, *args: object) -> None:
                self.zero_grad += 1

            def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
                if not cls.seen:   # the first step
                    cls.seen.update(nvml=os.environ.get(NVML_CHECK), module=pl_module, callbacks=trainer.callbacks,
                                    skipped={type(o).__name__: [h for h in BATCH_HOOKS if getattr(o, h) is None]
                                             for o in [pl_module, *trainer.callbacks]})
                cls.seen['steps'] = trainer.global_step
                cls.seen['after_backward'], cls.seen['zero_grad'] = self.after_backward, self.zero_grad
        return Watch


def test_lightning_skips_the_batch_hooks_that_do_nothing_and_only_while_training(
        save_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callbacks.fast_paths import BATCH_HOOKS, NVML_CHECK
    from utils import CALLBACKS
    monkeypatch.setitem(CALLBACKS._classes, 'hook_watch', HookWatch.make())
    monkeypatch.setattr(HookWatch, 'seen', {})
    monkeypatch.setenv(NVML_CHECK, '1')   # as importing Lightning leaves it
    assert run_pl(save_root, '--config', DIGITS, '--name', 'hooks', 'trainer_params.max_epochs=1',
                  'checkpoint.every_n_train_steps=15', 'checkpoint.monitor=null',
                  'checkpoint.save_top_k=-1', 'callbacks=[{name: hook_watch}]') == 0
    seen = HookWatch.seen
    # Hooks a class overrides still run at every step; ModelCheckpoint's only where it saves per step.
    assert seen['steps'] == seen['after_backward'] == seen['zero_grad'] == 40
    assert sorted(p.name for p in (save_root / 'hooks' / 'ckpt').iterdir()) == [
        'epoch=0-step=15.ckpt', 'epoch=0-step=30.ckpt', 'last.ckpt']
    skipped = seen['skipped']
    assert skipped['Watch'] == ['on_train_batch_start', 'on_before_backward', 'on_before_optimizer_step']
    assert skipped['BaseWrapper'] == [h for h in BATCH_HOOKS if h != 'on_train_batch_end']
    assert skipped['LastCheckpoint'] == list(BATCH_HOOKS)   # no per-step saves: its batch hook goes too
    assert skipped['ModelCheckpoint'] == [h for h in BATCH_HOOKS if h != 'on_train_batch_end']
    # torch's own GPU check while training; Lightning's NVML one before and after.
    assert seen['nvml'] is None and os.environ[NVML_CHECK] == '1'
    # After the run every object is as it was built.
    assert [(type(o).__name__, h) for o in [seen['module'], *seen['callbacks']] for h in vars(o) if h in BATCH_HOOKS] \
        == [('Watch', 'on_before_zero_grad')]


def test_a_wrapper_module_sets_lightnings_hook_name_directly_and_anything_else_as_nn_module_does() -> None:
    from models.wrappers import WrapperModule
    module = WrapperModule()
    module._current_fx_name = 'training_step'
    module.layer = torch.nn.Linear(2, 2)
    module.scale = torch.nn.Parameter(torch.ones(1))
    assert vars(module)['_current_fx_name'] == 'training_step'
    assert [n for n, _ in module.named_parameters()] == ['scale', 'layer.weight', 'layer.bias']


FAULTS = '''
import resource, sys, torch
from torch import nn
sys.path.insert(0, {root!r})
from utils import keep_freed_memory

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                    nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))   # the benchmark's conv net
images = torch.randn(64, 1, 28, 28)

def faults_per_step():
    def step():   # 20 MB of activations and gradients, freed at the end
        net(images).logsumexp(1).mean().backward()
        net.zero_grad(set_to_none=True)
    for _ in range(3):   # what the first steps leave behind
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

print(keep_freed_memory() if sys.argv[1] == 'kept' else 'default', faults_per_step())
'''


def test_kept_memory_ends_the_page_faults_of_a_conv_nets_steps() -> None:
    import subprocess
    import sys

    def run(mode: str) -> tuple[str, float]:
        done = subprocess.run([sys.executable, '-c', FAULTS.format(root=str(ROOT)), mode], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        took, faults = done.stdout.split()
        return took, float(faults)

    # glibc's default usually hands the activations back and faults them in again at every step
    # (about 5,000 pages of 4 KB); how often depends on its adaptive threshold, so only the
    # kept process is held to a bound.
    print('default:', run('default'))
    took, faults = run('kept')
    assert took == 'True' and faults < 1000
