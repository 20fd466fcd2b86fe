"""What the `base` training wrapper trains, without Lightning: train.py uses it directly."""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn

from lightyaml.errors import ConfigError, NonFiniteLossError
from lightyaml.registry import LOSSES, METRICS, MODELS, LossSpec, MetricSpec, ModelSpec, OptimizerSpec, SchedulerSpec
from lightyaml.train.optim import make_optimizer, make_scheduler

STAGES = ('train', 'val', 'test')


class RunningMeans:
    """Sums of named loss terms kept on the device (no host sync per step), averaged on demand."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.count = 0

    def add(self, terms: Mapping[str, Any], n: int = 1) -> None:
        """Add one batch's terms (means over its `n` samples): one in-place operation per term."""
        for name, value in terms.items():
            if name in self.sums:
                self.sums[name].add_(value.detach(), alpha=n)
            else:
                self.sums[name] = value.detach() * n
        self.count += n

    def compute(self, all_reduce: Optional[Callable[[Any], Any]] = None) -> dict[str, float]:
        """Means since the last reset; `all_reduce` sums a tensor across processes when distributed."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        totals = torch.stack([self.sums[n].float() for n in names] +
                             [torch.tensor(float(self.count), device=self.sums[names[0]].device)])
        if all_reduce is not None:
            totals = all_reduce(totals)
        totals = totals.tolist()
        return {n: totals[i] / max(totals[-1], 1.0) for i, n in enumerate(names)}

    def nonfinite_terms(self) -> list[str]:
        """Terms whose sums went NaN or infinite (one host sync)."""
        return [k for k, v in self.sums.items() if not torch.isfinite(v).all()]

    def reset(self) -> None:
        """Start a new epoch."""
        self.sums, self.count = {}, 0


class FiniteLossGuard:
    """The one rule for a NaN or infinite training loss, in every training path: the loss sums
    are checked where their values reach the host anyway (at the logging interval and at the end
    of the epoch), and a bad term stops the run before it reaches a checkpoint, naming the steps
    since the last good check."""

    def __init__(self) -> None:
        self.finite_until = -1   # the last step known to be finite

    def start_epoch(self, step: int) -> None:
        """The epoch's first step is `step`."""
        self.finite_until = step - 1

    def check(self, running: RunningMeans, epoch: int, step: int) -> None:
        """Raise NonFiniteLossError if a training sum went non-finite by `step` (0-based `epoch`)."""
        bad = running.nonfinite_terms()
        if bad:
            raise NonFiniteLossError(epoch + 1, self.finite_until + 1, step, bad)
        self.finite_until = step


def val_stages(names: Optional[Sequence[str]], loaders: int) -> list[str]:
    """Where each validation loader's metrics go: ['val'] for one; 'val/<name>' for named sets
    (the default data module's `val: {clean: SPEC, ...}`), else 'val/0', 'val/1', ..."""
    if names:
        return [f'val/{n}' for n in names]
    return ['val'] if loaders <= 1 else [f'val/{i}' for i in range(loaders)]


def hard_labels(target: torch.Tensor, pred: Any) -> torch.Tensor:
    """Class indices for the metrics: soft labels (MixUp, CutMix: a probability per class) give
    their most likely class."""
    soft = (target.is_floating_point() and isinstance(pred, torch.Tensor) and target.shape == pred.shape
            and target.dim() == 2 and target.shape[1] > 1)
    # A regression target of the prediction's shape is not soft labels: those sum to 1 per sample.
    if soft and bool(((target.sum(1) - 1).abs() < 1e-3).all()):
        return target.argmax(1)
    return target


def batch_size(batch: Any) -> int:
    """Number of samples in a batch dict (the first dimension of its first tensor)."""
    values = batch.values() if isinstance(batch, Mapping) else batch
    return next(len(v) for v in values if isinstance(v, torch.Tensor))


class Task(nn.Module):
    """Model, loss and metrics built from specs, plus the optimizer and scheduler they call for.

    Parameters live under `model.` and `loss.`: the state_dict is the same whether the task is
    trained by train.py or inside the Lightning wrapper, so checkpoints load in either.

    Args:
        model_spec, loss_spec: `{name, args}` from the model and loss registries.
        optim_spec: a `torch.optim` class by name, e.g. `{name: Adam, args: {lr: 1e-3}}`.
        scheduler_spec: a `torch.optim.lr_scheduler` class by name plus `interval` (epoch|step),
            `frequency`, `monitor` (for ReduceLROnPlateau) and `warmup` (linear, in intervals).
        metrics: `{short name: torchmetrics spec}`, computed on val and test (and on train if
            `train_metrics`), logged as `val/<short name>` (`val/<set>/<short name>` for named
            validation sets). Soft labels (MixUp, CutMix) are compared by their likeliest class.
        target_key: the batch key the metrics compare predictions with.
        channels_last: keep the model's 4-D weights in NHWC memory order (faster convolutions
            with tensor cores and oneDNN); results agree within float tolerance.
        compile: `torch.compile` the model's forward in place (parameter names, and so
            checkpoints, stay the same); the first steps are slow while it compiles.
        log_samples: show this many validation images (the batch's `image`) each epoch with
            their predicted and true labels: samples/val_epoch_NNN.png and `val/samples` in tb/.
    """

    def __init__(self, model_spec: ModelSpec, loss_spec: LossSpec, optim_spec: OptimizerSpec,
                 scheduler_spec: Optional[SchedulerSpec] = None,
                 metrics: Optional[dict[str, MetricSpec]] = None, target_key: str = 'label',
                 train_metrics: bool = False, channels_last: bool = False, compile: bool = False,
                 log_samples: int = 0) -> None:
        super().__init__()
        self.model = MODELS.make(model_spec)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()
        self.loss = LOSSES.make(loss_spec)
        self.optim_spec, self.scheduler_spec = optim_spec, scheduler_spec
        self.target_key = target_key
        stages = STAGES if train_metrics else ('val', 'test')
        # Keyed '<stage>_metrics': a ModuleDict cannot hold a key 'train' (nn.Module.train).
        self.metrics = nn.ModuleDict({
            f'{stage}_metrics': nn.ModuleDict({name: METRICS.make(spec) for name, spec in (metrics or {}).items()})
            for stage in stages})
        self.running = {stage: RunningMeans() for stage in STAGES}
        self.finite = FiniteLossGuard()
        self.log_samples = log_samples
        self._samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []   # this epoch's, on the CPU

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        return self.model(batch)

    def step(self, batch: Mapping[str, torch.Tensor], stage: str) -> tuple[Any, dict[str, torch.Tensor]]:
        """Forward and loss on one batch; accumulates the loss terms and metrics of `stage`."""
        pred = self.model(batch)
        if stage.partition('/')[0] == 'val' and self.log_samples > sum(len(s[0]) for s in self._samples):
            self.keep_samples(batch, pred)
        return pred, self.compute_loss(pred, batch, stage)

    def keep_samples(self, batch: Mapping[str, torch.Tensor], pred: Any) -> None:
        """Keep the first validation samples of the epoch for `log_samples` (a copy of a few, once)."""
        if 'image' not in batch:
            raise ConfigError("train_wrapper.args.log_samples: the batches have no 'image' to show")
        need = self.log_samples - sum(len(s[0]) for s in self._samples)
        self._samples.append(tuple(t[:need].detach().float().cpu() for t in
                                   (batch['image'], pred, batch[self.target_key])))

    def take_samples(self) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's kept samples (images, predictions, targets), or None; the next epoch keeps anew."""
        samples, self._samples = self._samples, []
        return tuple(torch.cat(parts) for parts in zip(*samples)) if samples else None

    def compute_loss(self, pred: Any, batch: Mapping[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """The loss terms of a prediction; accumulates them and the metrics of `stage`. (Under DDP
        the forward must go through the DDP wrapper, so train.py calls this after it.)"""
        terms = self.loss(pred, batch)
        self.add_stage(stage)
        self.running[stage].add(terms, batch_size(batch))
        if f'{stage}_metrics' in self.metrics:
            target = hard_labels(batch[self.target_key], pred)
            for metric in self.metrics[f'{stage}_metrics'].values():
                metric.update(pred.detach(), target)
        return terms

    def add_stage(self, stage: str) -> None:
        """Bookkeeping for a named validation set 'val/<name>': its own sums and metrics, as val's."""
        if stage not in self.running:
            self.running[stage] = RunningMeans()
            if 'val_metrics' in self.metrics:
                # Training mode, as the task's modules start a fit (a metric computes alike in both).
                self.metrics[f'{stage}_metrics'] = copy.deepcopy(self.metrics['val_metrics']).train()

    def epoch_metrics(self, stage: str, all_reduce: Optional[Callable] = None) -> dict[str, float]:
        """`{'<stage>/<term>': mean}` over the epoch (across processes), then reset for the next."""
        self.add_stage(stage)
        values = {f'{stage}/{k}': v for k, v in self.running[stage].compute(all_reduce).items()}
        self.running[stage].reset()
        metrics = self.metrics[f'{stage}_metrics'] if f'{stage}_metrics' in self.metrics else {}
        for name, metric in metrics.items():
            if metric.update_count:
                values[f'{stage}/{name}'] = float(metric.compute())
            metric.reset()
        return values

    def has_trainable_parameters(self) -> bool:
        """False for a model (and loss) with buffers only or nothing at all: the run then
        evaluates, logs and checkpoints as usual, with no optimizer and no backward pass."""
        return any(p.requires_grad for p in self.parameters())

    def configure_optimizers(self) -> Optional[dict]:
        """`{'optimizer': ..., 'lr_scheduler': {'scheduler', 'interval', 'frequency', 'monitor'}}`,
        or None when there is nothing to train."""
        if not self.has_trainable_parameters():
            return None
        optimizer = make_optimizer(self.optim_spec, self.parameters())
        scheduler = make_scheduler(self.scheduler_spec, optimizer)
        return {'optimizer': optimizer, 'lr_scheduler': scheduler} if scheduler else {'optimizer': optimizer}

    def check_finite(self, epoch: int, step: int) -> None:
        """The training loss terms so far are finite (FiniteLossGuard), or the run stops."""
        self.finite.check(self.running['train'], epoch, step)

    def apply_changed_specs(self, optimizer: Any, scheduler: Optional[dict], saved: Mapping) -> list[str]:
        """After a resume: optimizer and scheduler arguments the config now gives differently from
        the checkpoint's `saved` hyper-parameters replace the restored ones (a new `lr` rescales
        the schedule's current rate and its base). Returns what changed, for the log."""
        changes = []
        old_args = dict((saved.get('optim_spec') or {}).get('args') or {})
        for key, new in ((self.optim_spec or {}).get('args') or {}).items():
            old = old_args.get(key)
            if old == new or key not in optimizer.param_groups[0]:
                continue
            for group in optimizer.param_groups:
                if key == 'lr':   # (rates that scale_lr multiplied stay multiplied: 1.0 without it)
                    group['lr'] = group['lr'] * new / old if old else new
                    if 'initial_lr' in group:
                        group['initial_lr'] = new * (group['initial_lr'] / old if old else 1.0)
                else:
                    group[key] = new
            if key == 'lr' and scheduler is not None and hasattr(scheduler['scheduler'], 'base_lrs'):
                bases = scheduler['scheduler'].base_lrs
                scheduler['scheduler'].base_lrs = [new * (b / old if old else 1.0) for b in bases]
            changes.append(f'optimizer {key} {old} -> {new}')
        old_args = dict((saved.get('scheduler_spec') or {}).get('args') or {})
        for key, new in ((self.scheduler_spec or {}).get('args') or {}).items():
            current = getattr(scheduler['scheduler'], key, None) if scheduler else None
            if old_args.get(key) != new and type(current) is type(new):
                setattr(scheduler['scheduler'], key, new)
                changes.append(f'scheduler {key} {old_args.get(key)} -> {new}')
        return changes
