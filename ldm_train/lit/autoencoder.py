"""Phase 1 LightningModule: the KL-autoencoder and its PatchGAN, trained with two optimizers.

Manual optimisation, both steps on the same batch (Esser et al. 2021; Rombach et al. 2022 §3):
  1. autoencoder (+ learned logvar): rec/LPIPS NLL + KL + adaptive-weighted generator loss;
  2. discriminator on real vs *detached* reconstructions (only from `disc_start` on).
Gradient accumulation, clipping, LR schedules and EMA are implemented here, because Lightning
leaves them to the module under manual optimisation. A step with a non-finite loss or gradient
skips both optimizers (`NonFiniteGuard`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from torchmetrics import MeanMetric

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.export import export_autoencoder
from ldm_train.autoencoder.layouts import has_legacy_names, legacy_parameter_positions
from ldm_train.autoencoder.losses import AutoencoderLoss
from ldm_train.autoencoder.pretrained import load_autoencoder_init
from ldm_train.constraints import ExistingPath, OpenUnitInterval, PositiveFloat, PositiveInt, check_arguments
from ldm_train.lit.ema import EMA
from ldm_train.lit.fault_tolerance import NonFiniteGuard, end_of_training_batches
from ldm_train.lit.latent_stats import estimate_latent_std
from ldm_train.nn.frozen import freeze
from ldm_train.speed import CompileMode, SpeedSettings, prepare_module

log = logging.getLogger(__name__)
AUTOENCODER_PREFIX = "autoencoder."  # the attribute below, as it prefixes checkpoint keys
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler | None]  # None: a constant LR
LATENT_NOISE_SEED = 0  # of the posterior samples behind the latent scale (plus the rank)


class AutoencoderModule(L.LightningModule):
    frozen_submodules = ("loss.perceptual",)  # LPIPS (nn/frozen.py): 58 MB of fixed weights; FSDP leaves it unsharded

    def __init__(
        self,
        autoencoder: AutoencoderKL,
        loss: AutoencoderLoss,
        optimizer: OptimizerFactory,
        disc_optimizer: OptimizerFactory,
        lr_scheduler: SchedulerFactory | None = None,
        grad_clip: PositiveFloat | None = None,
        accumulate_grad_batches: PositiveInt = 1,
        ema_decay: OpenUnitInterval | None = None,
        latent_scale_batches: PositiveInt = 16,
        init_from: ExistingPath | None = None,
        max_nonfinite_steps: PositiveInt = 20,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: CompileMode = "default",
    ) -> None:
        """channels_last: the autoencoder's and discriminator's weights and the images in NHWC; compile:
        torch.compile the encoder and the decoder in place (static shapes, README "Speed switches")."""
        super().__init__()
        check_arguments(AutoencoderModule.__init__, locals())
        if init_from:  # fine-tune a pretrained VAE: diffusers folder, SD .safetensors or .ckpt
            load_autoencoder_init(autoencoder, init_from)
        self.automatic_optimization = False
        self.autoencoder = autoencoder
        self.loss = loss
        if loss.perceptual is not None:
            freeze(loss.perceptual)  # LPIPS is frozen already; any other perceptual network becomes so
        self.optimizer_factory = optimizer
        self.disc_optimizer_factory = disc_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.grad_clip = grad_clip
        self.accumulate = accumulate_grad_batches
        self.channels_last = channels_last
        for net in (autoencoder, loss.discriminator):  # before the EMA copy, so it shares the layout
            prepare_module(net, SpeedSettings(channels_last=channels_last))
        self.ema = EMA(autoencoder, ema_decay) if ema_decay else None
        # The encoder and the decoder (AutoencoderKL.compile: the decoder's output layer stays eager for the
        # adaptive GAN weight); the EMA copy stays eager.
        prepare_module(autoencoder, SpeedSettings(compile=compile, compile_mode=compile_mode))
        self.latent_scale_batches = latent_scale_batches
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        # The validation loss (the stage's checkpoint/sweep metric), reduced over all ranks by torchmetrics.
        # Image-quality scores (PSNR, SSIM, LPIPS, rFID) come from the evaluation callback
        # (ldm_train.lit.evaluation), with the definitions of `scripts/evaluate.py`.
        self.val_rec = MeanMetric()

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        ae_params = list(self.autoencoder.parameters()) + list(self.loss.generator_parameters())
        opt_ae = self.optimizer_factory(ae_params)
        opt_d = self.disc_optimizer_factory(list(self.loss.discriminator_parameters()))
        scheduler = None
        if self.lr_scheduler_factory is not None:
            total = int(self.trainer.estimated_stepping_batches) // self.accumulate
            scheduler = self.lr_scheduler_factory(opt_ae, total_steps=total)  # None: a constant LR
        if scheduler is None:
            return [opt_ae, opt_d]
        return [opt_ae, opt_d], [{"scheduler": scheduler, "interval": "step"}]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint written before the VAE took diffusers' parameter names (renamed on load by AutoencoderKL)
        # lists the autoencoder's parameters in another order; the autoencoder optimizer's state is matched by
        # position, so it moves with them. The learned logvar follows the autoencoder's parameters, unmoved.
        keys = [k.removeprefix(AUTOENCODER_PREFIX) for k in checkpoint["state_dict"] if k.startswith(AUTOENCODER_PREFIX)]
        if not has_legacy_names(keys) or not checkpoint.get("optimizer_states"):
            return
        positions = legacy_parameter_positions(keys, [name for name, _ in self.autoencoder.named_parameters()])
        optimizer = checkpoint["optimizer_states"][0]  # opt_ae: the autoencoder's parameters first
        optimizer["state"] = {(positions[i] if i < len(positions) else i): s for i, s in optimizer["state"].items()}

    @property
    def step(self) -> int:
        """Autoencoder optimizer steps taken (= trainer.global_step; see `_step_discriminator`)."""
        return self.global_step

    def training_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["image"]  # B×3×H×W in [-1, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt_ae, opt_d = self.optimizers()
        boundary = (batch_idx + 1) % self.accumulate == 0
        step = self.step

        recon, posterior = self.autoencoder(x)
        g_loss, logs = self.loss.generator_loss(x, recon, posterior, step, self.autoencoder.last_layer)
        self.manual_backward(g_loss / self.accumulate)
        losses = [g_loss]
        # D's loss does not depend on this step's autoencoder update (it sees detached reconstructions),
        # so both backward passes come first and one decision covers both optimizer steps.
        disc_active = self.loss.discriminator_active(step)
        if disc_active:
            d_loss, d_logs = self.loss.discriminator_loss(x, recon.detach(), step)
            self.manual_backward(d_loss / self.accumulate)
            logs.update(d_logs)
            losses.append(d_loss)
        self.nonfinite.observe(*losses)
        if boundary:
            optimizers = [opt_ae, opt_d] if disc_active else [opt_ae]
            norms = [self._clip_and_norm(opt) for opt in optimizers]
            logs["grad_norm/autoencoder"] = norms[0]
            if disc_active:
                logs["grad_norm/discriminator"] = norms[1]
            finite = self.nonfinite.check(optimizers, norms, self.trainer.strategy)
            opt_ae.step()  # a no-op on a skipped step (no gradients), but it still counts as a step
            opt_ae.zero_grad(set_to_none=True)
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
            if self.ema is not None and finite:
                self.ema.update(self.autoencoder)
                logs["ema_decay"] = torch.tensor(self.ema.current_decay())
            if disc_active:
                self._step_discriminator(opt_d)
            logs["nonfinite_steps"] = self.nonfinite.skipped.float()
        self.log("train/rec", logs.pop("rec"), prog_bar=True, on_step=True)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True)

    def _step_discriminator(self, opt_d) -> None:
        # Lightning counts every LightningOptimizer.step() in global_step; stepping the wrapped
        # optimizer directly keeps global_step = autoencoder steps, so `max_steps` and
        # `disc_start` mean what they say. (No fp16 grad scaler here: use bf16-mixed or fp32.)
        opt_d.optimizer.step()
        opt_d.zero_grad(set_to_none=True)

    def _clip_and_norm(self, optimizer) -> torch.Tensor:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def on_fit_start(self) -> None:
        if self.trainer.precision in ("16-mixed", "16"):
            raise ValueError(
                "stage=autoencoder does not support fp16 (two manually stepped optimizers would need two "
                "grad scalers). Use trainer.precision=bf16-mixed or 32-true."
            )

    # -- validation -----------------------------------------------------------------------------
    @property
    def eval_autoencoder(self) -> AutoencoderKL:
        """The weights used for validation, images and export: the EMA when there is one."""
        return self.ema.shadow if self.ema is not None else self.autoencoder

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["image"]
        net = self.eval_autoencoder
        recon = net.decode(net.encode(x).mode()).clamp(-1, 1)
        l1 = (x - recon).abs().mean(dim=(1, 2, 3))
        rec = l1
        if self.loss.perceptual is not None:
            rec = l1 + self.loss.perceptual_weight * self.loss.perceptual(x, recon).flatten()
        self.val_rec.update(rec)

    def on_validation_epoch_end(self) -> None:
        self.log("val/rec_loss", self.val_rec.compute(), prog_bar=True, sync_dist=False)
        self.val_rec.reset()

    def evaluation_input(self) -> AutoencoderKL:
        """What `ldm_train.lit.evaluation` scores: the EMA weights when there are any."""
        return self.eval_autoencoder

    # -- images, latent scale, export ---------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["image"]
        net = self.eval_autoencoder
        recon = net.decode(net.encode(x).mode()).clamp(-1, 1)
        return {"inputs": x, "reconstructions": recon, "abs_difference": (x - recon).abs() - 1}

    def on_train_end(self) -> None:
        # Fixed batches and noise: a run resumed after its final checkpoint exports the same latent scale.
        loader = end_of_training_batches(self.trainer)
        if loader is not None and self.latent_scale_batches > 0:
            self.set_latent_scale(loader, self.latent_scale_batches)
        if self.trainer.is_global_zero:
            path = export_autoencoder(self.eval_autoencoder, self.trainer.default_root_dir)
            log.info("Exported the autoencoder for phase 2: %s", path)

    @torch.no_grad()
    def set_latent_scale(self, loader, num_batches: int) -> float:
        """Latent scale = 1/std of the posterior samples over `num_batches` of every rank."""
        generator = torch.Generator(self.device).manual_seed(LATENT_NOISE_SEED + self.global_rank)
        std = estimate_latent_std(self.eval_autoencoder, loader, num_batches, self.device, self.trainer.strategy, generator)
        for net in {id(m): m for m in (self.autoencoder, self.eval_autoencoder)}.values():
            net.latent_norm.set_from_statistics(std)
        self.print(f"Latent std {std:.4f} → latent scale {1.0 / std:.5f}")
        return 1.0 / std
