"""The experiment's metric files: the per-epoch log line, metrics.csv and TensorBoard events,
and the parameter summary. Lightning-free: train.py writes them directly; train_pl.py through
callbacks/base_logger.py."""
from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


_WRITERS = itertools.count()


def event_file_suffix() -> str:
    """A SummaryWriter's `filename_suffix` that no other writer has: tensorboardX names its file by
    the second and the host only and opens it with 'wb', so a writer started in the same second
    into the same folder (a quick --resume) would wipe the events of the first."""
    return f'.{os.getpid()}.{next(_WRITERS)}'


# `train/loss`, `train_loss`, `valid/acc`, `val_acc_epoch`: a stage prefix, then the metric's name.
_STAGED_KEY = re.compile(r'^(train|training|val|valid|validation|test)[/_](.+)$')
_STAGE_NAMES = {'training': 'train', 'valid': 'val', 'validation': 'val'}


def split_metric_key(key: str) -> Optional[tuple[str, str]]:
    """(stage, metric) of a logged key, or None for what is not an epoch-level metric.

    Any naming a LightningModule uses is understood: `train/loss` and `train_loss` are
    ('train', 'loss'), `valid/acc` and `val_acc_epoch` ('val', 'acc'); a key without a stage
    prefix (`loss`, `lr-Adam`) is ('other', key). Step-level values (`..._step`) and the
    `epoch`/`step` counters are None.
    """
    if key in ('epoch', 'step') or key.endswith('_step'):
        return None
    key = key[:-len('_epoch')] if key.endswith('_epoch') else key
    match = _STAGED_KEY.match(key)
    if match is None:
        return 'other', key
    return _STAGE_NAMES.get(match[1], match[1]), match[2]


def format_epoch_line(epoch: int, max_epochs: Optional[int], metrics: Mapping[str, float],
                      epoch_seconds: float, elapsed: float, epochs_done: int) -> str:
    """The per-epoch line of log.txt, the same for both entry points:

    epoch 3/20  train: loss 0.2311  val: loss 0.1540 acc 0.9593  1.2s, 4s / ~27s

    Keys are grouped by `split_metric_key`; keys without a stage go under `other:`. With several
    validation sets, one group each: `val/clean: acc 0.97 ...  val/noisy: acc 0.90 ...`.
    """
    total = f'/{max_epochs}' if max_epochs and max_epochs > 0 else ''
    parts = [f'epoch {epoch}{total}']
    groups: dict[str, dict[str, float]] = {}   # 'train', 'val', 'val/clean', 'other' -> {name: value}
    for key, value in metrics.items():
        split = split_metric_key(key)
        if split is None or split[0] == 'test':
            continue
        stage, name = split
        if stage == 'val' and '/' in name:   # one of several validation sets: val/clean/acc
            subset, _, name = name.rpartition('/')
            stage = f'val/{subset}'
        groups.setdefault(stage, {})[name] = value
    for stage in sorted(groups, key=lambda s: (s == 'other', s != 'train', s)):
        parts.append(f'{stage}: ' + ' '.join(f'{k} {v:.4f}' for k, v in sorted(groups[stage].items())))
    timing = f'{epoch_seconds:.1f}s, {format_duration(elapsed)}'
    if max_epochs and max_epochs > 0 and epochs_done > 0:
        timing += f' / ~{format_duration(elapsed / epochs_done * max_epochs)}'
    parts.append(timing)
    return '  '.join(parts)


class MetricsWriter:
    """metrics.csv and TensorBoard events of one experiment; appends, never truncates.

    A new metric name adds a column: the file is rewritten once with the wider header.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.csv_path = Path(path) / 'metrics.csv'
        self.tb_dir = Path(path) / 'tb'
        self._columns: list[str] = []
        self._tb = None
        if self.csv_path.exists():
            with open(self.csv_path, newline='') as f:
                self._columns = next(csv.reader(f), [])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write one row (`step` and the metrics) and the same scalars to TensorBoard."""
        row = {'step': step, **{k: int(v) if k == 'epoch' else float(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in self._columns]
        if new:
            old_rows = []
            if self.csv_path.exists():
                with open(self.csv_path, newline='') as f:
                    old_rows = list(csv.DictReader(f))
            fixed = [c for c in ('epoch', 'step') if c in self._columns or c in row]
            self._columns = fixed + sorted(set(self._columns + new) - set(fixed))
            with open(self.csv_path, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(old_rows)
        with open(self.csv_path, 'a', newline='') as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(row)
        for key, value in metrics.items():
            if key != 'epoch':
                self.tensorboard.add_scalar(key, float(value), step)

    @property
    def tensorboard(self) -> Any:
        """The tensorboardX SummaryWriter of tb/ (made on first use): add_image, add_figure, ..."""
        if self._tb is None:
            from tensorboardX import SummaryWriter  # tensorboardX: only once the folder is written
            self._tb = SummaryWriter(str(self.tb_dir), filename_suffix=event_file_suffix())
        return self._tb

    def flush(self) -> None:
        """Push TensorBoard events to disk."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and release the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def model_summary(module: Any) -> str:
    """Parameter counts per top-level submodule and in total, for the head of log.txt. Lazy
    parameters not yet initialized (no shape, normally materialized before this) are counted
    apart, and buffers are not parameters: a model with none says `parameters: 0 total`."""
    from torch.nn.parameter import is_lazy  # torch: not needed by --list/--print-config

    def count(m: Any) -> int:
        return sum(p.numel() for p in m.parameters() if not is_lazy(p))
    parts = [f'{name} {count(child):,}' for name, child in module.named_children() if count(child)]
    lazy = sum(is_lazy(p) for p in module.parameters())
    return (f'parameters: {count(module):,} total' + (f' ({", ".join(parts)})' if parts else '')
            + (f', and {lazy} lazy ones not yet initialized' if lazy else ''))
