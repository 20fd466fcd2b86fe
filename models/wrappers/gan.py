"""The `gan` training wrapper: a generator and a discriminator, each with its own optimizer."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn import functional as F

from lightyaml.train.optim import make_optimizer, make_scheduler, step_schedulers
from lightyaml.train.task import STAGES, FiniteLossGuard, RunningMeans
from models.wrappers import WrapperModule, register
from utils import MODELS, ConfigError, ModelSpec, OptimizerSpec, SchedulerSpec


@register('gan')
class GANWrapper(WrapperModule):
    """A GAN under manual optimization: on each batch one discriminator step, then one generator step.

    The discriminator learns real -> 1 and generated -> 0; the generator learns to make it say 1
    (the non-saturating loss). Logged once per epoch, as means over the epoch reduced across
    processes: `train/d_loss`, `train/g_loss` and `train/d_acc` (the discriminator's accuracy on
    each step's real and generated images, before its update), and the same as `val/...` and
    `test/...`, where every real image is paired with one generated from noise fixed per batch.
    Both losses are means over their terms, so a discriminator at chance (d_acc 0.5) makes both
    ln 2 = 0.69: the balance a GAN aims for. A d_acc stuck near 1 means the generator has lost.

    After every training epoch, global rank 0 saves images generated from fixed noise to
    `<experiment folder>/samples/epoch_NNN.png` (NNN counts from 1, as log.txt does).
    `global_step` (and so `trainer_params.max_steps`) counts optimizer steps: two per batch.

    Args:
        generator_spec: a model with `latent_dim` mapping `{'z': (N, latent_dim)}` to images in [0, 1].
        discriminator_spec: a model mapping `{image_key: images}` to one logit per image, (N,).
        g_optim_spec, d_optim_spec: a `torch.optim` class by name for each network.
        g_scheduler_spec, d_scheduler_spec: optional schedulers, stepped per their `interval`.
        image_key: the batch key of the real images.
        real_label: the discriminator's target for real images; below 1 ("one-sided label
            smoothing") keeps it from growing so confident that the generator's gradients vanish.
        samples_per_epoch: images in each epoch's PNG grid (0: none).
        sample_zoom: each sample is enlarged this many times (nearest pixel) so 8x8 digits can be seen.
    """

    def __init__(self, generator_spec: ModelSpec, discriminator_spec: ModelSpec,
                 g_optim_spec: OptimizerSpec, d_optim_spec: OptimizerSpec,
                 g_scheduler_spec: Optional[SchedulerSpec] = None,
                 d_scheduler_spec: Optional[SchedulerSpec] = None, image_key: str = 'image',
                 real_label: float = 1.0, samples_per_epoch: int = 64, sample_zoom: int = 4) -> None:
        super().__init__()
        self.automatic_optimization = False   # two optimizers, stepped in turn in training_step
        self.save_hyperparameters()
        self.generator = MODELS.make(generator_spec)
        self.discriminator = MODELS.make(discriminator_spec)
        if not isinstance(getattr(self.generator, 'latent_dim', None), int):
            raise ValueError(f"generator {generator_spec['name']!r} has no integer `latent_dim`, the size "
                             f"of the noise it takes as batch['z']")
        # Fixed noise for the sample grids, saved in checkpoints, so every epoch (resumed ones
        # included) shows the same latent points. Its own generator leaves the training RNG alone.
        noise = torch.randn(samples_per_epoch, self.generator.latent_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer('sample_noise', noise)
        self.running = {stage: RunningMeans() for stage in STAGES}
        self.finite = FiniteLossGuard()
        self._schedulers: list[dict] = []

    # ----------------------------------------------------------------------------- the two losses

    def noise(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latent vectors for `n` images."""
        return torch.randn(n, self.generator.latent_dim, device=self.device, generator=generator)

    def discriminator_terms(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """`d_loss` (mean of the real and the fake BCE) and `d_acc` (share classified right)."""
        key = self.hparams.image_key
        real_logits, fake_logits = self.discriminator({key: real}), self.discriminator({key: fake})
        real_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, self.hparams.real_label))
        fake_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
        return {'d_loss': (real_loss + fake_loss) / 2, 'd_acc': accuracy}

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """BCE of the discriminator's verdict on `fake` against "real": large when it is not fooled."""
        logits = self.discriminator({self.hparams.image_key: fake})
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    # ----------------------------------------------------------------------------------- training

    def on_fit_start(self) -> None:
        # Each batch has two backward passes and neither reaches every parameter (the
        # discriminator's loss stops at the detached images), which DDP refuses unless told.
        model = self.trainer.strategy.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not model.find_unused_parameters:
            raise ConfigError('trainer_params.strategy: each of the gan wrapper\'s two backward passes per batch '
                              'leaves some parameters unused, which DDP refuses unless told; with several '
                              'processes set trainer_params.strategy: ddp_find_unused_parameters_true')

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        real = batch[self.hparams.image_key]
        g_opt, d_opt = self.optimizers()
        fake = self.generator({'z': self.noise(len(real))})
        # Discriminator first; `detach` keeps this loss from reaching the generator.
        d_terms = self.discriminator_terms(real, fake.detach())
        d_opt.zero_grad()
        self.manual_backward(d_terms['d_loss'])
        d_opt.step()
        # Then the generator, against the discriminator just updated. The gradients this leaves
        # on the discriminator are cleared by its zero_grad on the next batch.
        g_loss = self.generator_loss(fake)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self._step_schedulers('step')
        terms = {**d_terms, 'g_loss': g_loss}
        self.running['train'].add(terms, len(real))
        # Lightning writes step values every log_every_n_steps batches; global_step is 2 per batch.
        if (self.global_step // 2) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f'train/{k}_step': v.detach() for k, v in terms.items()}, prog_bar=True)

    def on_train_epoch_start(self) -> None:
        self.finite.start_epoch(self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The epoch's means are logged on its last batch, so that callbacks (BaseLogger's epoch
        # line) see them in `on_train_epoch_end`, as in the base wrapper.
        if self.is_last_train_batch(batch_idx):
            self.finite.check(self.running['train'], self.current_epoch, self.global_step - 1)
            self._log_epoch('train')

    def on_train_epoch_end(self) -> None:
        self._step_schedulers('epoch')
        if self.trainer.is_global_zero:
            self.save_samples()

    # --------------------------------------------------------------------------------- evaluation

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, 'val')

    def on_validation_epoch_end(self) -> None:
        self._log_epoch('val')

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, 'test')

    def on_test_epoch_end(self) -> None:
        self._log_epoch('test')

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The discriminator's probability that each image is real (what `--predict` writes)."""
        key = self.hparams.image_key
        return torch.sigmoid(self.discriminator({key: batch[key]}))

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """Each real image against one generated image. The noise is fixed per batch and process,
        so epochs are compared on the same latent points and the training RNG is not touched."""
        real = batch[self.hparams.image_key]
        seed = batch_idx * self.trainer.world_size + self.global_rank
        fake = self.generator({'z': self.noise(len(real), torch.Generator(self.device).manual_seed(seed))})
        terms = {**self.discriminator_terms(real, fake), 'g_loss': self.generator_loss(fake)}
        self.running[stage].add(terms, len(real))

    def _log_epoch(self, stage: str) -> None:
        """Log `<stage>/<term>`: the epoch's means over all processes (sums and counts reduced
        together), then start the next epoch's."""
        means = self.running[stage].compute(self.sum_across_processes)
        self.running[stage].reset()
        self.log_epoch_means({f'{stage}/{k}': v for k, v in means.items()})

    # ------------------------------------------------------------------------------------ samples

    @torch.no_grad()
    def save_samples(self) -> Optional[Path]:
        """Save the fixed noise's images as a grid in `<log_dir>/samples/epoch_NNN.png`; returns
        the path, or None when there is no logger (no experiment folder) or no samples."""
        if self.trainer.logger is None or self.trainer.logger.log_dir is None or not len(self.sample_noise):
            return None
        import torchvision  # torchvision: only when its models, transforms or files are used
        training = self.generator.training
        self.generator.eval()   # dropout or batch norm in a generator must not vary the grid
        images = self.generator({'z': self.sample_noise}).float().cpu()
        self.generator.train(training)
        if self.hparams.sample_zoom > 1:
            images = F.interpolate(images, scale_factor=self.hparams.sample_zoom, mode='nearest')
        path = Path(self.trainer.logger.log_dir) / 'samples' / f'epoch_{self.current_epoch + 1:03d}.png'
        path.parent.mkdir(exist_ok=True)
        torchvision.utils.save_image(images, path, nrow=math.ceil(math.sqrt(len(images))), pad_value=0.5)
        return path

    # ------------------------------------------------------------------------ optimizers, schedulers

    def configure_optimizers(self) -> tuple[list, list]:
        """`[generator optimizer, discriminator optimizer]` and the schedulers given for them."""
        h = self.hparams
        g_opt = make_optimizer(h.g_optim_spec, self.generator.parameters())
        d_opt = make_optimizer(h.d_optim_spec, self.discriminator.parameters())
        self._schedulers = [config for config in (make_scheduler(h.g_scheduler_spec, g_opt),
                                                  make_scheduler(h.d_scheduler_spec, d_opt)) if config]
        # Lightning keeps the schedulers' state in checkpoints; stepping them is ours in manual
        # optimization, so `monitor` stays here (Lightning would warn that it ignores it).
        return [g_opt, d_opt], [{k: v for k, v in c.items() if k != 'monitor'} for c in self._schedulers]

    def _step_schedulers(self, interval: str) -> None:
        """Step the schedulers due at the end of this step or epoch (lightyaml/train/optim.py's rule)."""
        count = self.current_epoch + 1 if interval == 'epoch' else self.global_step // 2
        step_schedulers(self._schedulers, interval, count, self.trainer.callback_metrics)
