"""Lightning's FSDP through train_pl.py, as far as a CPU can check it (bench/gpu_check.py runs it on a
GPU): the strategy from the config, its one line on the CPU, the atomic checkpoint folders and their
reading by --test, the EMA of shards."""
from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import DIGITS, RUNNERS, run_pl, run_py

ON_THE_CPU = ("trainer_params.strategy: FSDP needs CUDA GPUs (Lightning's limit); on the CPU use strategy=ddp, or "
              "train.py's sharding: {wrap: [torch.nn.Linear]}")
SPEC = 'trainer_params.strategy={name: fsdp, args: {auto_wrap_policy: [torch.nn.Linear], state_dict_type: sharded}}'


@pytest.mark.parametrize('override', ['trainer_params.strategy=fsdp', SPEC])
def test_fsdp_on_the_cpu_is_one_line_before_anything_is_created(override: str, save_root: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert run_pl(save_root, '--config', DIGITS, override) == 2
    assert capsys.readouterr().err == f"error: override '{override}': {ON_THE_CPU}\n"
    assert not save_root.exists()


def test_gpu_cpu_on_an_fsdp_config_is_the_same_line(save_root: Path, capsys: pytest.CaptureFixture) -> None:
    # The config asks for GPUs; --gpu cpu makes it a CPU run, which FSDP cannot be.
    args = ['--config', DIGITS, 'trainer_params.accelerator=gpu', 'trainer_params.strategy=fsdp', '--gpu', 'cpu']
    assert run_pl(save_root, *args) == 2
    assert capsys.readouterr().err == f"error: override 'trainer_params.strategy=fsdp': {ON_THE_CPU}\n"
    assert not save_root.exists()


def test_a_strategy_spec_is_checked_against_its_class(save_root: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)   # as on a GPU machine: past check_gpu_asked
    override = ('trainer_params.strategy={name: FSDPStrategy, args: {use_orig_params: false, state_dict_typ: full, '
                'limit_all_gathers: true, auto_wrap_policy: Linear}}')
    assert run_pl(save_root, '--config', DIGITS, 'trainer_params.accelerator=gpu', override) == 2
    where = f"error: override '{override}': trainer_params.strategy.args"
    assert capsys.readouterr().err.splitlines() == [
        f"{where}.use_orig_params: lightyaml's wrappers and the ema callback use the original parameters; keep "
        "Lightning's default (true)",
        f"{where}.state_dict_typ: strategy 'FSDPStrategy' does not take 'state_dict_typ' (did you mean "
        "'state_dict_type'?) (FSDPStrategy's and FullyShardedDataParallel's arguments)",
        f"{where}.auto_wrap_policy: expected a list of module class names such as [torch.nn.Linear], got 'Linear'"]
    assert run_pl(save_root, '--config', DIGITS, 'trainer_params.strategy={name: fsdpp}') == 2
    assert "trainer_params.strategy.name: unknown strategy 'fsdpp' (did you mean 'fsdp'?); Lightning has: ddp, " \
           in capsys.readouterr().err


def test_a_spec_of_another_strategy_trains(save_root: Path) -> None:
    environ = dict(os.environ)
    try:
        assert run_pl(save_root, '--config', DIGITS, 'trainer_params.max_epochs=1',
                      'trainer_params.limit_train_batches=2',
                      'trainer_params.strategy={name: ddp, args: {find_unused_parameters: true}}') == 0
    finally:
        # In-process DDP leaves its process group and MASTER_PORT & co. in this process: a later test's
        # DDP subprocess would inherit the port the group still holds, and hang.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)


def test_fsdp_specs_build_lightyamls_atomic_strategy_with_the_classes_named() -> None:
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from lightyaml.config.loading import load_config
    from lightyaml.train.fsdp import AtomicFSDPStrategy, make_strategy
    from utils import WRAPPERS
    cfg = load_config(Path(DIGITS), [SPEC.replace('torch.nn.Linear', 'Linear')])   # a class of the model, by name
    wrapper = WRAPPERS.make(cfg['train_wrapper'])
    params = make_strategy(cfg, {'accelerator': 'gpu', **cfg['trainer_params']}, wrapper)
    strategy = params['strategy']
    assert type(strategy) is AtomicFSDPStrategy and strategy._state_dict_type == 'sharded'
    policy = strategy.kwargs['auto_wrap_policy']
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {torch.nn.Linear}
    offload = make_strategy(cfg, {'accelerator': 'gpu', 'strategy': 'fsdp_cpu_offload'}, wrapper)['strategy']
    assert type(offload) is AtomicFSDPStrategy and offload.cpu_offload.offload_params


# ------------------------------------------------------------------------------------ checkpoint folders

def as_shards(ckpt: Path) -> None:
    """A checkpoint file rewritten in place as the folder Lightning's FSDP writes with `state_dict_type:
    sharded`: the weights and the optimizer's state by torch.distributed.checkpoint, the rest in meta.pt."""
    import torch.distributed.checkpoint as dcp
    state = torch.load(ckpt, weights_only=True)
    ckpt.unlink()
    with warnings.catch_warnings():   # "assuming the intent is to save in a single process": it is
        warnings.simplefilter('ignore', UserWarning)
        dcp.save({'model': state.pop('state_dict'), 'optimizer_0': state.pop('optimizer_states')[0]},
                 checkpoint_id=ckpt)
    torch.save(state, ckpt / 'meta.pt')


@pytest.fixture(scope='module')
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train_pl.py run whose last.ckpt is a folder of shards, and a copy of its file as `plain.ckpt`."""
    save_root = tmp_path_factory.mktemp('save')
    assert run_pl(save_root, '--config', DIGITS, '--name', 'run', 'trainer_params.max_epochs=2',
                  'callbacks=[{name: ema, args: {decay: 0.9}}]') == 0
    ckpt = save_root / 'run' / 'ckpt' / 'last.ckpt'
    shutil.copy(ckpt, ckpt.with_name('plain.ckpt'))
    as_shards(ckpt)
    return save_root / 'run'


@pytest.mark.parametrize('entry', ['train.py', 'train_pl.py'])
def test_test_reads_a_checkpoint_folder_as_its_file(entry: str, sharded_run: Path) -> None:
    from lightyaml.config.loading import parse_yaml
    assert RUNNERS[entry](sharded_run.parent, '--test', str(sharded_run), '--ckpt', 'last') == 0
    assert RUNNERS[entry](sharded_run.parent, '--test', str(sharded_run), '--ckpt',
                          str(sharded_run / 'ckpt' / 'plain.ckpt')) == 0
    tests = parse_yaml((sharded_run / 'test.yaml').read_text(), 'test.yaml')
    assert tests['last.ckpt (ema)'] == tests['plain.ckpt (ema)']   # the average, from meta.pt


def test_init_from_takes_a_folders_weights_and_train_py_does_not_resume_it(
        sharded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lightyaml.run.checkpoint_files import read_weights, training_done
    folder, plain = sharded_run / 'ckpt' / 'last.ckpt', torch.load(sharded_run / 'ckpt' / 'plain.ckpt',
                                                                   weights_only=True)
    weights = read_weights(folder, '--init-from')
    assert list(weights) == list(plain['state_dict'])
    assert all(torch.equal(weights[k], plain['state_dict'][k]) for k in weights)
    assert training_done(folder) == (2, 80)
    copy_of_run = tmp_path / 'save' / 'run'
    shutil.copytree(sharded_run, copy_of_run)
    assert run_py(copy_of_run.parent, '--resume', str(copy_of_run), 'trainer_params.max_epochs=3') == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --resume {copy_of_run}/ckpt/last.ckpt: a checkpoint folder of Lightning's FSDP (its shards) "
        f"continues under train_pl.py's strategy: fsdp; train.py reads its weights (--test, --init-from)")


def test_a_folder_is_replaced_whole_even_when_killed_between_the_two_renames(tmp_path: Path) -> None:
    from lightyaml.run.checkpoint_files import replace_folder
    from lightyaml.run.experiment_dir import checkpoint_on_disk

    def shards(path: Path, text: str) -> Path:
        path.mkdir()
        (path / 'meta.pt').write_text(text)
        return path
    last = shards(tmp_path / 'last.ckpt', 'epoch 1')
    replace_folder(shards(tmp_path / 'last.ckpt.tmp', 'epoch 2'), last)
    assert (last / 'meta.pt').read_text() == 'epoch 2' and sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt']
    # A kill after the first rename: the previous folder is whole under .old, and is found there ...
    last.rename(tmp_path / 'last.ckpt.old')
    assert checkpoint_on_disk(last) == tmp_path / 'last.ckpt.old'
    # ... until the next save puts it back, then replaces it.
    replace_folder(shards(tmp_path / 'last.ckpt.tmp', 'epoch 3'), last)
    assert (last / 'meta.pt').read_text() == 'epoch 3' and sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt']
    replace_folder(shards(tmp_path / 'last.ckpt.tmp', 'epoch 4'), tmp_path / 'was.ckpt')   # nothing there before
    assert (tmp_path / 'was.ckpt' / 'meta.pt').read_text() == 'epoch 4'


def test_lightyamls_fsdp_strategy_writes_a_sharded_checkpoint_through_a_tmp_folder(tmp_path: Path) -> None:
    # One process, no process group: torch.distributed.checkpoint writes a single shard.
    from lightyaml.run.checkpoint_files import read_checkpoint
    from lightyaml.train.fsdp import AtomicFSDPStrategy
    strategy = AtomicFSDPStrategy(state_dict_type='sharded')
    last = tmp_path / 'last.ckpt'
    for epoch in (1, 2):
        state = {'state_dict': {'model.w': torch.full((3,), float(epoch))}, 'optimizer_states': [{'state': {},
                 'param_groups': [{'lr': 0.1, 'params': ['model.w']}]}], 'epoch': epoch,
                 'hyper_parameters': {'net': torch.nn.Linear(2, 2)}}   # an object: saved as its class name
        with warnings.catch_warnings():   # "assuming the intent is to save in a single process": it is
            warnings.simplefilter('ignore', UserWarning)
            strategy.save_checkpoint(state, last)
        assert sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt']   # no .tmp, no .old left
    read = read_checkpoint(last, 'test')
    assert read['epoch'] == 2 and torch.equal(read['state_dict']['model.w'], torch.full((3,), 2.0))
    assert read['hyper_parameters'] == {'net': '<torch.nn.modules.linear.Linear>'}
    assert read['optimizer_states'] == ['optimizer_0']


def test_the_average_of_shard_views_is_the_average_of_the_state_dict() -> None:
    # The EMA under FSDP reads the tensors afresh each time (FSDP re-points its views); on plain tensors
    # it must give the same bits as the default.
    from lightyaml.train.ema import EMA, EMAParams
    from lightyaml.train.fsdp import shard_views
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    twin = copy.deepcopy(module)
    params = EMAParams(decay=0.8, start_step=1, every_n_steps=2)
    plain, views = EMA(module, params), EMA(twin, params, live=shard_views(twin))
    for step in range(1, 6):
        for m in (module, twin):
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.sin(p * step))
            m(torch.ones(3, 4))   # the running statistics move too
        plain.update(step)
        views.update(step)
    assert all(torch.equal(plain.weights[k], views.weights[k]) for k in plain.weights)
    with plain.swapped(), views.swapped():
        assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), twin.state_dict().values()))
        assert all(torch.equal(module.state_dict()[k], plain.weights[k]) for k in plain.weights)
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), twin.state_dict().values()))
    assert not torch.equal(module.state_dict()['0.weight'], plain.weights['0.weight'])
