"""Checkpoints and generator state, Lightning-free: reading and checking checkpoints, loading
weights, seeding, the RNG state an exact resume needs, and train.py's checkpoint files in
Lightning's layout (so weights move freely between the two entry points)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.nn.parameter import is_lazy

from lightyaml.built_specs import spec_of
from lightyaml.config.loading import Config, config_differences, parse_yaml
from lightyaml.errors import ConfigError, display_path
from lightyaml.run.disk_space import as_full_disk, is_torch_writer_failure
from lightyaml.run.experiment_dir import SHARDS_META, ExperimentDir, checkpoint_on_disk


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states, in types `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'python': random.getstate(), 'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    gauss], 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured, so a resumed run draws the same numbers."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def read_checkpoint(path: Path, flag: str) -> dict:
    """A checkpoint's contents (tensors memory-mapped, `weights_only=True`); a missing, corrupt or
    foreign file is a ConfigError naming the flag."""
    state = _loaded(path, flag)
    if not isinstance(state, dict) or 'state_dict' not in state:
        raise ConfigError(f'{flag}: {display_path(path)} is not a lightyaml/Lightning checkpoint (no state_dict)')
    _refuse_non_tensors(state['state_dict'], 'its state_dict', path, flag)
    return state


# Where files from elsewhere keep their weights, beside a plain `torch.save(model.state_dict())`.
WEIGHTS_KEYS = ('state_dict', 'model')


def read_weights(path: Path, flag: str) -> Mapping[str, torch.Tensor]:
    """The weights in a file for --init-from: a Lightning or lightyaml checkpoint's `state_dict`, a
    `{'state_dict': ...}` or `{'model': ...}` file's, or a plain `torch.save(model.state_dict())`."""
    state = _loaded(path, flag)
    key = next((k for k in WEIGHTS_KEYS if isinstance(state, Mapping) and isinstance(state.get(k), Mapping)), None)
    weights = state[key] if key is not None else state
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(f'{flag}: {display_path(path)} holds no weights (a state_dict, a {{state_dict: ...}} file '
                          f'or a Lightning checkpoint), but a {type(weights).__name__}')
    _refuse_non_tensors(weights, f'its {key}' if key else 'it', path, flag)
    return weights


def _loaded(path: Path, flag: str) -> Any:
    try:
        if path.is_dir():
            return _from_shards(path)
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:
        raise ConfigError(f'{flag}: cannot read the checkpoint {display_path(path)} ({_unreadable(e)})') from None


def _from_shards(path: Path) -> dict:
    """A sharded checkpoint (a folder, Lightning's FSDP with `state_dict_type: sharded`) as one
    process reads it: meta.pt's contents, and the weights assembled whole in `state_dict`. Its
    `optimizer_states` are the names of the optimizers' entries in the folder: Lightning's FSDP
    reads those itself, sharded, on --resume."""
    # torch.distributed.checkpoint: only for a checkpoint folder (the reader Lightning's own consolidation uses)
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    state = torch.load(path / SHARDS_META, map_location='cpu', weights_only=True)
    reader = FileSystemReader(path)
    entries = {key.split('.')[0] for key in reader.read_metadata().state_dict_metadata}
    whole: dict[str, Any] = {}
    with warnings.catch_warnings():   # "assuming the intent is to load in a single process": it is
        warnings.simplefilter('ignore', UserWarning)
        _load_state_dict(whole, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys={'model'}),
                         no_dist=True)
    return {**state, 'state_dict': whole.get('model', {}),
            'optimizer_states': sorted(e for e in entries if e.startswith('optimizer_'))}


def _refuse_non_tensors(weights: Any, what: str, path: Path, flag: str) -> None:
    foreign = next(((k, v) for k, v in weights.items() if not isinstance(v, torch.Tensor)), None) if isinstance(
        weights, Mapping) else ('state_dict', weights)
    if foreign is not None:   # strings or numbers where weights belong: nothing could load them
        raise ConfigError(f'{flag}: {display_path(path)} is not a lightyaml/Lightning checkpoint ({what} holds '
                          f'a {type(foreign[1]).__name__} at {foreign[0]!r}, not a tensor)')


def _unreadable(error: Exception) -> str:
    """Why torch.load failed, in a few words: a pickled object weights_only refuses (torch's own
    message is a paragraph of advice to load it anyway), or a truncated or foreign file."""
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', str(error))
    if refused:
        return (f'it holds a pickled Python object, {refused[1]}, that loading with weights_only=True refuses; '
                f'a checkpoint holds tensors and plain values only')
    detail = f'{type(error).__name__}: {(str(error).strip().splitlines() or [""])[0][:120]}'
    return f'truncated, corrupt or not a torch file: {detail}'


def find_checkpoint(target: str, flag: str) -> Path:
    """A .ckpt file as given, or an experiment folder's ckpt/last.ckpt; checked to be readable (for
    --init-from, a file of weights from elsewhere too)."""
    path = Path(target)
    if path.is_dir() and checkpoint_on_disk(path) != path:   # an experiment folder (not a checkpoint folder)
        last = ExperimentDir(path).ckpt_dir / 'last.ckpt'
        path = checkpoint_on_disk(last)
        if path is None:
            raise ConfigError(f'{flag} {target}: no checkpoint in this folder ({display_path(last)} is missing)')
    elif checkpoint_on_disk(path) != path:
        raise ConfigError(f'{flag} {target}: no such experiment folder or checkpoint file')
    (read_weights if flag == '--init-from' else read_checkpoint)(path, f'{flag} {target}')
    return path


def _weight_mismatches(weights: Mapping[str, Any], own: Mapping[str, Any]) -> list[str]:
    # A lazy parameter has no shape yet: loading gives it the checkpoint's (torch's lazy load hook).
    shapes = [f'{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in weights and not is_lazy(v) and weights[k].shape != v.shape]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    problems = ([f"shapes differ (checkpoint vs model): {'; '.join(shapes)}"] if shapes else []) + \
               ([f"missing in the checkpoint: {', '.join(missing)}"] if missing else []) + \
               ([f"not in the model: {', '.join(unexpected)}"] if unexpected else [])
    return problems


def load_weights(module: Any, path: Path, flag: str = '--init-from', state: Optional[Mapping] = None,
                 prefixes: Optional[Mapping] = None) -> None:
    """Load only the weights of a file (or of `state`, a checkpoint read already) into `module`,
    their names mapped by `prefixes` (the config's `init_from`: `strip_prefix`, then `add_prefix`);
    every mismatch is listed in one line, with the mapping that would match where one does."""
    weights = state['state_dict'] if state is not None else read_weights(path, f'{flag} {display_path(path)}')
    strip, add = ((prefixes or {}).get('strip_prefix') or ''), ((prefixes or {}).get('add_prefix') or '')
    weights = _renamed(weights, strip, add)
    own = module.state_dict()
    problems = _weight_mismatches(weights, own)
    if problems:
        raise ConfigError(f'{flag} {display_path(path)}: ' + '; '.join(problems) + _mapping_hint(weights, own))
    module.load_state_dict({k: weights[k] for k in own})


def _renamed(weights: Mapping[str, Any], strip: str, add: str) -> dict[str, Any]:
    return {add + (k[len(strip):] if strip and k.startswith(strip) else k): v for k, v in weights.items()}


def _mapping_hint(weights: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    """'; init_from: {strip_prefix: net., add_prefix: model.} maps every name' where stripping the
    file's one first name part and/or adding the model's makes the names match, else ''."""
    def first_part(keys: Any) -> str:
        parts = {k.split('.')[0] for k in keys}
        return f'{parts.pop()}.' if len(parts) == 1 and all('.' in k for k in keys) else ''
    if weights.keys() == own.keys():
        return ''   # the names match already: the shapes differ
    for strip in dict.fromkeys(('', first_part(weights))):
        for add in dict.fromkeys(('', first_part(own))):
            if strip != add and _renamed(weights, strip, add).keys() == own.keys():
                mapping = ', '.join(f'{name}: {value}' for name, value in
                                    (('strip_prefix', strip), ('add_prefix', add)) if value)
                return f'; the config key init_from: {{{mapping}}} maps every name'
    return ''


# What a checkpoint needs to continue a run (Lightning's layout), beyond the weights.
_TRAINING_STATE = ('epoch', 'global_step', 'optimizer_states', 'lr_schedulers', 'callbacks')


def check_resumable(module: Any, path: Path, flag: str = '--resume', cfg: Optional[Config] = None) -> None:
    """Before anything is written: the checkpoint holds a whole training state (not only weights)
    for exactly this model's parameters and shapes; otherwise one line saying what differs (with
    `cfg`, the override that changed a shape)."""
    state = read_checkpoint(path, f'{flag} {display_path(path)}')
    missing = [k for k in _TRAINING_STATE if k not in state]
    if missing:
        raise ConfigError(f"{flag} {display_path(path)}: holds weights only (no {', '.join(missing)}), so it cannot "
                          f"continue a run; start a new run from it with --init-from {display_path(path)}")
    own = module.state_dict()
    problems = _weight_mismatches(state['state_dict'], own)
    reshaped = [k for k, v in own.items() if k in state['state_dict'] and not is_lazy(v)
                and state['state_dict'][k].shape != v.shape]
    saved = (state.get('hyper_parameters') or _recorded_args(path)) if reshaped and cfg is not None else None
    changes = _changed_since(saved, cfg) if saved is not None else []
    if changes:
        key, then, now = reshaped[0], state['state_dict'][reshaped[0]].shape, own[reshaped[0]].shape
        raise ConfigError(f"{flag} {display_path(path)}: {' and '.join(changes)} changes the shape of {key} "
                          f"({_dims(then)} in the checkpoint, {_dims(now)} now); a resumed run keeps its shapes: "
                          f"start a new run with the change instead (--config "
                          f"{display_path(path.parent.parent / 'config.yaml')} --name NEW_NAME ...)")
    if problems:
        raise ConfigError(f'{flag} {display_path(path)}: the config builds a different model: ' + '; '.join(problems))


def _dims(shape: torch.Size) -> str:
    return 'x'.join(map(str, shape)) or 'a scalar'


def _recorded_args(path: Path) -> Any:
    """The wrapper arguments a run's config.yaml records, for a checkpoint in its ckpt/ whose module
    saved no hyperparameters (None without that file)."""
    config = path.parent.parent / 'config.yaml'
    if not config.is_file():
        return None
    recorded = parse_yaml(config.read_text(), display_path(config)) or {}
    return (recorded.get('train_wrapper') or {}).get('args') if isinstance(recorded, Mapping) else None


def _changed_since(hparams: Any, cfg: Config) -> list[str]:
    """What now gives the wrapper other arguments than the checkpoint's saved `hyper_parameters`:
    the overrides behind them (through a reference too), else the keys with both values."""
    args = (cfg.get('train_wrapper') or {}).get('args') or {}
    if not isinstance(hparams, Mapping) or not isinstance(args, Mapping):
        return []
    found: list[str] = []
    for line in config_differences(hparams, args):
        if line.endswith(', (absent) now'):   # a default the wrapper saved and the config leaves out
            continue
        key = 'train_wrapper.args.' + line.partition(': ')[0]
        reference = re.fullmatch(r'\$\{([^}]+)\}', cfg.references.get(key, ''))
        origin = cfg.where(reference[1] if reference else key)
        change = origin if origin.startswith('override') else f'{key} ({line.partition(": ")[2]})'
        if change not in found:
            found.append(change)
    return found


def training_done(path: Path) -> tuple[int, int]:
    """(epochs, optimizer steps) a checkpoint has finished. train.py writes checkpoints at the end
    of an epoch, recording its index; Lightning also counts the epochs processed (which tells a
    mid-epoch checkpoint apart)."""
    state = read_checkpoint(path, display_path(path))
    progress = state.get('loops', {}).get('fit_loop', {}).get('epoch_progress', {}).get('current', {})
    epochs = progress.get('processed', int(state.get('epoch', -1)) + 1)
    return int(epochs), int(state.get('global_step', 0))


def atomic_torch_save(state: Any, path: Path) -> None:
    """torch.save through `<path>.tmp` in the same folder and an atomic rename: a kill or an error
    mid-write leaves the previous file whole. Never through $TMPDIR: on another file system the
    final move would be a copy, and a kill during it would leave half a file."""
    tmp = path.with_name(path.name + '.tmp')
    path.parent.mkdir(parents=True, exist_ok=True)   # `checkpoint.filename` may name a subfolder
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except RuntimeError as e:
        tmp.unlink(missing_ok=True)
        if is_torch_writer_failure(e):   # a short write: say that the disk (or quota) is full, and where
            raise as_full_disk(e, path) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_folder(tmp: Path, path: Path) -> None:
    """A whole checkpoint folder `tmp` in the place of `path` (a folder, a file or nothing) by two
    renames: `path` to `<path>.old`, `tmp` to `path`; then `<path>.old` is removed. A kill between the
    renames leaves `<path>.old` whole, and `checkpoint_on_disk` finds it there."""
    old = path.with_name(path.name + '.old')
    if checkpoint_on_disk(path) == old:   # the last replacement was killed between its renames
        os.replace(old, path)
    _remove(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def loadable_hyperparameters(value: Any) -> Any:
    """A checkpoint's `hyper_parameters` made of what a `weights_only` load reads back: an object or
    factory built from a spec (a module's `net`, its `optimizer` partial) becomes that spec, a class
    or function its dotted name, any other object `<its class>`; numbers, strings, tensors and
    containers of them stay. The run's config.yaml, not these, rebuilds the module."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, Mapping):
        return {k: loadable_hyperparameters(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [loadable_hyperparameters(v) for v in value]
        return tuple(items) if type(value) is tuple else items
    found = spec_of(value)
    if found is not None:
        return dict(found[1])
    if isinstance(value, type) or (callable(value) and hasattr(value, '__qualname__')):   # a class, a function
        return f'{value.__module__}.{value.__qualname__}'
    return f'<{type(value).__module__}.{type(value).__qualname__}>'


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def experiment_checkpoint(exp: ExperimentDir, which: str) -> Path:
    """For --test/--predict --ckpt: `last`, `best` (the best monitored checkpoint, else the last) or
    a path to a .ckpt."""
    if which not in ('best', 'last'):
        return find_checkpoint(which, '--ckpt')
    last = exp.ckpt_dir / 'last.ckpt'
    best = None
    if which == 'best' and (exp.path / 'result.yaml').is_file():
        best = (parse_yaml((exp.path / 'result.yaml').read_text(), 'result.yaml') or {}).get('best', {}).get(
            'checkpoint')
    path = exp.ckpt_dir / best if best else last
    if checkpoint_on_disk(path) is None:
        raise ConfigError(f'--ckpt {which}: no checkpoint {display_path(path)}')
    return checkpoint_on_disk(path)


def checkpoint_name(template: Optional[str], metrics: Mapping[str, float]) -> str:
    """ModelCheckpoint's names: `{epoch}-{val/acc:.3f}` -> `epoch=3-val_acc=0.981`."""
    def fill(match: re.Match) -> str:
        key, fmt = match[1], match[2] or ''
        return f"{key.replace('/', '_')}={format(metrics.get(key, float('nan')), fmt[1:] if fmt else '')}"
    return re.sub(r'\{([^}:]+)(:[^}]*)?\}', fill, template or '{epoch}-{step}')


@dataclasses.dataclass
class Optimizers:
    """What a checkpoint saves and restores besides the weights and counters (each may be None):
    the optimizer, the scheduler as Lightning's dict (`scheduler`, `interval`, ...), the float16
    gradient scaler."""
    optimizer: Any = None
    scheduler: Optional[dict] = None
    scaler: Any = None


def save_checkpoint(path: Path, task: Any, optimizers: Optimizers, counters: tuple[int, int], hparams: Mapping,
                    callbacks: Mapping[str, Any]) -> None:
    """Lightning's layout (state_dict keys as the `base` wrapper's; the generator states where
    LastCheckpoint keeps them), written atomically: a kill mid-write leaves the old file.
    `counters`: (epoch, global step)."""
    (epoch, step), optimizer, scheduler = counters, optimizers.optimizer, optimizers.scheduler
    try:
        lightning_version = importlib.metadata.version('pytorch-lightning')
    except importlib.metadata.PackageNotFoundError:
        lightning_version = '2.6.6'
    state = {'epoch': epoch, 'global_step': step, 'pytorch-lightning_version': lightning_version,
             'state_dict': task.state_dict(),
             'optimizer_states': [optimizer.state_dict()] if optimizer is not None else [],
             'lr_schedulers': [scheduler['scheduler'].state_dict()] if scheduler else [],
             'hyper_parameters': dict(hparams), 'callbacks': {**callbacks, 'LastCheckpoint': {'rng': rng_state()}}}
    if optimizers.scaler is not None:
        state['MixedPrecision'] = optimizers.scaler.state_dict()
    atomic_torch_save(state, path)


class TopK:
    """train.py's ModelCheckpoint: the best `k` checkpoints by a monitored value (the latest ones
    with no monitor). `params` has ModelCheckpoint's `monitor`, `mode`, `save_top_k`,
    `every_n_epochs` and `filename`."""

    def __init__(self, params: Any, folder: Path) -> None:
        self.params, self.folder = params, folder
        self.kept: list[tuple[float, Path]] = []

    def state_dict(self) -> dict[str, Any]:
        return {'kept': [[score, path.name] for score, path in self.kept]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.kept = [(score, self.folder / name) for score, name in state.get('kept', [])]

    def best(self) -> tuple[Optional[float], Optional[Path]]:
        """The best monitored value and its checkpoint (None, None without a monitor)."""
        if not self.kept or not self.params.monitor:
            return None, None
        score, path = self.kept[0]
        return (score if self.params.mode == 'max' else -score), path

    def update(self, metrics: Mapping[str, float], save: Any) -> None:
        p = self.params
        if p.save_top_k == 0 or (p.every_n_epochs and (metrics['epoch'] + 1) % p.every_n_epochs):
            return
        value = metrics.get(p.monitor, math.nan) if p.monitor else float(metrics['step'])
        if math.isnan(value):
            return
        score = value if (p.mode == 'max' or not p.monitor) else -value
        path = self.folder / f"{checkpoint_name(p.filename, metrics)}.ckpt"
        if p.save_top_k > 0 and len(self.kept) >= p.save_top_k and score <= min(self.kept)[0]:
            return
        save(path)
        self.kept.append((score, path))
        self.kept.sort(reverse=True)
        while p.save_top_k > 0 and len(self.kept) > p.save_top_k:
            self.kept.pop()[1].unlink(missing_ok=True)
