"""The `base` training wrapper: the Task's model, loss and metrics under Lightning's hooks."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

from models.task import Task
from models.wrappers import WrapperModule, register
from utils import NonFiniteLossError, Spec


@register('base')
class BaseWrapper(Task, WrapperModule):
    """Supervised training of one model with one loss; see `Task` for the arguments.

    Logs every loss term and metric as `train/...`, `val/...`, `test/...` once per epoch (means
    over the whole epoch, reduced across processes), and `train/<term>_step` every
    `log_every_n_steps`. Loss terms are summed on the device, so logging costs no host sync per
    step. `save_hyperparameters` lets `BaseWrapper.load_from_checkpoint(path)` rebuild it alone.
    """

    def __init__(self, model_spec: Spec['models'], loss_spec: Spec['losses'], optim_spec: Spec['optimizers'],
                 scheduler_spec: Optional[Spec['schedulers']] = None,
                 metrics: Optional[dict[str, Spec['metrics']]] = None, target_key: str = 'label',
                 train_metrics: bool = False, channels_last: bool = False, compile: bool = False) -> None:
        super().__init__(model_spec, loss_spec, optim_spec, scheduler_spec, metrics, target_key, train_metrics,
                         channels_last, compile)
        self.save_hyperparameters()

    def _sum_across_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op='sum')

    def _log_epoch(self, values: dict[str, float]) -> None:
        # The values are already exact over all processes (sums and counts reduced together);
        # a 'max' sync of identical values keeps them bit-exact and tells Lightning they are synced.
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True, reduce_fx='max')

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._saved_hparams = checkpoint.get('hyper_parameters', {})

    def on_train_start(self) -> None:
        # A resume restores the optimizer as it was; arguments given anew on the command line win.
        saved = getattr(self, '_saved_hparams', None)
        if saved:
            configs = self.trainer.lr_scheduler_configs
            scheduler = {'scheduler': configs[0].scheduler} if configs else None
            for change in self.apply_changed_specs(self.trainer.optimizers[0], scheduler, saved):
                print(f'resume: {change} (from the config)')

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, terms = self.step(batch, 'train')
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._check_finite(self.global_step)
            self.log_dict({f'train/{k}_step': v.detach() for k, v in terms.items()}, prog_bar=True)
        return terms['loss']

    def _check_finite(self, step: int) -> None:
        # Checked where the step's values reach the host anyway; names the window since the last check.
        bad = self.nonfinite_terms()
        if bad:
            raise NonFiniteLossError(self.current_epoch + 1, getattr(self, '_finite_until', -1) + 1, step, bad)
        self._finite_until = step

    def on_train_epoch_start(self) -> None:
        self._finite_until = self.global_step - 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The epoch's train means are logged on its last batch, so that callbacks (BaseLogger's
        # epoch line, checkpoints monitoring train/...) see them in `on_train_epoch_end`.
        trainer = self.trainer
        last = (trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
                or 0 < trainer.max_steps <= trainer.global_step)
        if last:
            self._check_finite(trainer.global_step - 1)
            self._log_epoch(self.epoch_metrics('train', self._sum_across_processes))

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self.step(batch, 'val')

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.epoch_metrics('val', self._sum_across_processes))

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self.step(batch, 'test')

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.epoch_metrics('test', self._sum_across_processes))

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.model(batch)
