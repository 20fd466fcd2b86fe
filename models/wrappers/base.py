"""The `base` training wrapper: the Task's model, loss and metrics under Lightning's hooks."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from lightyaml.run.sample_grid import write_prediction_grid
from lightyaml.train.optim import monitored_value, step_scheduler
from lightyaml.train.task import Task, val_stages
from models.wrappers import WrapperModule, register
from utils import LossSpec, MetricSpec, ModelSpec, OptimizerSpec, SchedulerSpec


@register('base')
class BaseWrapper(Task, WrapperModule):
    """Supervised training of one model with one loss; see `Task` for the arguments.

    Logs every loss term and metric as `train/...`, `val/...`, `test/...` once per epoch (means
    over the whole epoch, reduced across processes), and `train/<term>_step` every
    `log_every_n_steps`. Loss terms are summed on the device, so logging costs no host sync per
    step. `save_hyperparameters` lets `BaseWrapper.load_from_checkpoint(path)` rebuild it alone.
    """

    _returns_loss = True   # until `on_fit_start` knows (Lightning's Tuner trains before it runs)

    def __init__(self, model_spec: ModelSpec, loss_spec: LossSpec, optim_spec: OptimizerSpec,
                 scheduler_spec: Optional[SchedulerSpec] = None,
                 metrics: Optional[dict[str, MetricSpec]] = None, target_key: str = 'label',
                 train_metrics: bool = False, channels_last: bool = False, compile: bool = False,
                 log_samples: int = 0) -> None:
        super().__init__(model_spec=model_spec, loss_spec=loss_spec, optim_spec=optim_spec,
                         scheduler_spec=scheduler_spec, metrics=metrics, target_key=target_key,
                         train_metrics=train_metrics, channels_last=channels_last, compile=compile,
                         log_samples=log_samples)
        self.save_hyperparameters()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._saved_hparams = checkpoint.get('hyper_parameters', {})

    def on_train_start(self) -> None:
        # A resume restores the optimizer as it was; arguments given anew on the command line win.
        saved = getattr(self, '_saved_hparams', None)
        if saved and self.has_trainable_parameters():
            configs = self.trainer.lr_scheduler_configs
            scheduler = {'scheduler': configs[0].scheduler} if configs else None
            for change in self.apply_changed_specs(self.trainer.optimizers[0], scheduler, saved):
                print(f'resume: {change} (from the config)')

    def on_fit_start(self) -> None:
        # Lightning warns once per step of a training_step returning None; with no parameters to
        # train (configure_optimizers gave None) that is what it should do.
        self._returns_loss = self.has_trainable_parameters()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> Optional[torch.Tensor]:
        _, terms = self.step(batch, 'train')
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.check_finite(self.current_epoch, self.global_step)
            self.log_dict({f'train/{k}_step': v.detach() for k, v in terms.items()}, prog_bar=True)
        return terms['loss'] if self._returns_loss else None

    def on_train_epoch_start(self) -> None:
        self.finite.start_epoch(self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The epoch's train means are logged on its last batch, so that callbacks (BaseLogger's
        # epoch line, checkpoints monitoring train/...) see them in `on_train_epoch_end`.
        if self.is_last_train_batch(batch_idx):
            self.check_finite(self.current_epoch, self.trainer.global_step - 1)
            self.log_epoch_means(self.epoch_metrics('train', self.sum_across_processes))

    def on_train_epoch_end(self) -> None:
        # Lightning steps epoch schedulers right after this hook; a monitored metric that was not
        # logged is the same error as in train.py and the gan wrapper, not Lightning's traceback.
        for config in self.trainer.lr_scheduler_configs:
            if config.monitor and config.interval == 'epoch' and (self.current_epoch + 1) % config.frequency == 0:
                monitored_value(config.monitor, self.trainer.callback_metrics, f'epoch {self.current_epoch + 1}')

    def lr_scheduler_step(self, scheduler: Any, metric: Optional[Any]) -> None:
        step_scheduler(scheduler, None if metric is None else float(metric))

    def on_validation_epoch_start(self) -> None:
        # One loader per validation set; the data module names them (`val: {clean: SPEC, ...}`).
        names = getattr(self.trainer.datamodule, 'val_names', None)
        loaders = self.trainer.val_dataloaders
        self._val_stages = val_stages(names, len(loaders) if isinstance(loaders, (list, tuple)) else 1)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.step(batch, self._val_stages[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        for stage in self._val_stages:
            self.log_epoch_means(self.epoch_metrics(stage, self.sum_across_processes))
        samples = self.take_samples()
        if samples is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking and self.logger:
            # self.logger is the experiment folder's: log_dir is save/<name>, experiment the tb/ writer.
            # The step is the one Lightning logs the epoch's val/ metrics at (the last one done).
            write_prediction_grid(Path(self.logger.log_dir), self.logger.experiment, self.current_epoch + 1,
                                  self.global_step - 1, samples)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self.step(batch, 'test')

    def on_test_epoch_end(self) -> None:
        self.log_epoch_means(self.epoch_metrics('test', self.sum_across_processes))

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.model(batch)
