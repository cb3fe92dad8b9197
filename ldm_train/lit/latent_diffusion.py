"""Phase 2 LightningModule: a text-conditioned UNet trained in a frozen VAE's latent space.

    image ─► frozen VAE.encode_latents ─► z ─► objective: q(z_t|z,t), UNet(z_t, t, context) ─► loss
    caption ─(dropped to "" with p = cond_drop_prob, for CFG)─► frozen text encoder ─► context

The objective (schedule, parameterisation, weighting, timestep sampling) is a separate object;
the UNet never knows which one is used. The frozen VAE and text encoder are not trained, never
reach the optimizer and are left out of checkpoints (they are rebuilt from their own sources).
A step with a non-finite loss or gradient is skipped and counted (`NonFiniteGuard`).
Speed switches (ldm_train/speed.py): channels-last and torch.compile of the UNet; the frozen VAE always
encodes in fp32, also under bf16 autocast; batches from the latent cache (data=latents) skip both encoders.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from ldm_train.constraints import NonNegativeInt, OpenUnitInterval, PositiveInt, check_arguments
from ldm_train.data.latents import CONTEXT_KEY, LATENT_MEAN_KEY, sample_cached_latents
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.lit.ema import EMA
from ldm_train.lit.fault_tolerance import NonFiniteGuard
from ldm_train.nn.frozen import freeze
from ldm_train.runs import adopt_first_stage, first_stage_record
from ldm_train.sampling.pipeline import GuidedSampler, LatentDiffusionPipeline
from ldm_train.speed import CompileMode, SpeedSettings, full_precision, prepare_module

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler | None]  # None: a constant LR
# Prompts of the image grids logged during training (Fashion-MNIST, the built-in data).
SAMPLE_PROMPTS = ("a photo of a t-shirt", "a photo of a pair of trousers", "a photo of a sneaker", "a photo of a bag")


class LatentDiffusionModule(L.LightningModule):
    frozen_submodules = ("first_stage", "text_encoder")  # nn/frozen.py; FSDP leaves them unsharded

    def __init__(
        self,
        unet: nn.Module,
        first_stage: nn.Module,
        text_encoder: nn.Module,
        objective: DiffusionObjective,
        optimizer: OptimizerFactory,
        lr_scheduler: SchedulerFactory | None = None,
        ema_decay: OpenUnitInterval | None = 0.9999,
        cond_drop_prob: OpenUnitInterval = 0.1,
        text_cache_size: NonNegativeInt = 256,
        val_timesteps: Sequence[NonNegativeInt] = (50, 250, 500, 750, 950),
        val_seed: NonNegativeInt = 1234,
        loss_buckets: PositiveInt = 4,
        sample_prompts: Sequence[str] = SAMPLE_PROMPTS,
        sampler: GuidedSampler | None = None,
        max_nonfinite_steps: PositiveInt = 20,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: CompileMode = "default",
    ) -> None:
        """channels_last: the UNet's weights and input latents in NHWC; compile: torch.compile the UNet's
        forward in place (static shapes, README "Speed switches"), with `compile_mode`."""
        super().__init__()
        check_arguments(LatentDiffusionModule.__init__, locals())
        _check_compatible(unet, first_stage, text_encoder)
        self.channels_last = channels_last
        self.unet = prepare_module(unet, SpeedSettings(channels_last=channels_last))  # before the EMA copy
        self.first_stage = freeze(first_stage)
        self.text_encoder = freeze(text_encoder)
        self.objective = objective
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.ema = EMA(unet, ema_decay) if ema_decay else None
        self.cond_drop_prob = cond_drop_prob
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.val_timesteps = list(val_timesteps)
        self.val_seed = val_seed
        self.loss_buckets = loss_buckets
        self.sample_prompts = list(sample_prompts)
        self.sampler = sampler or GuidedSampler()
        self.sampler.check(objective.schedule)  # e.g. a VP-only sampler for diffusion=flow: fail now, not at the first grid
        # What sampling needs, in one object: the EMA UNet (when there is one), the frozen parts, the objective's
        # schedule and parameterisation; the latent shape is set by the first training step or a checkpoint.
        self.pipeline = LatentDiffusionPipeline(self.sampling_unet, self.text_encoder, self.first_stage,
                                                objective.schedule, objective.prediction)
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._first_stage_record: dict | None = None  # set at the first save (hashing the VAE once)
        self._grad_norm: torch.Tensor | None = None  # this step's, for logging and clipping alike
        # After the EMA copy: the EMA and sampling UNets stay eager (compiled once, the training UNet only).
        prepare_module(self.unet, SpeedSettings(compile=compile, compile_mode=compile_mode))

    def setup(self, stage: str) -> None:
        check = getattr(self.trainer.datamodule, "check_frozen", None)  # data=latents: made by these networks?
        if check is not None:
            check(self.first_stage, self.text_encoder)

    # -- checkpoints ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # The run directory gets its own copy of a phase-1 export, so it can be moved whole (ldm_train/runs.py).
        if self.trainer.is_global_zero:
            adopt_first_stage(getattr(self.first_stage, "source", None), self.trainer.default_root_dir)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What `TextToImage.from_checkpoint` needs besides the config: the VAE (the run's copy, by path relative
        # to the run and SHA-256) and the latent size.
        if self._first_stage_record is None:
            self._first_stage_record = first_stage_record(getattr(self.first_stage, "source", None))
        checkpoint["first_stage"] = self._first_stage_record
        checkpoint["latent_shape"] = self.latent_shape

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.latent_shape = checkpoint.get("latent_shape")

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """C×h×w of one latent: the pipeline's, recorded in checkpoints."""
        return self.pipeline.latent_shape

    @latent_shape.setter
    def latent_shape(self, shape: Sequence[int] | None) -> None:
        self.pipeline.latent_shape = None if shape is None else tuple(shape)

    @property
    def sampling_unet(self) -> nn.Module:
        """EMA weights when there are any: used for validation, samples and export."""
        return self.ema.shadow if self.ema is not None else self.unet

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.unet.parameters() if p.requires_grad])
        scheduler = None
        if self.lr_scheduler_factory is not None:  # the factory returns None for a constant LR
            scheduler = self.lr_scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def drop_captions(self, captions: list[str]) -> list[str]:
        """Replace each caption by "" with probability cond_drop_prob (classifier-free guidance)."""
        keep = torch.rand(len(captions)) >= self.cond_drop_prob
        return [c if k else "" for c, k in zip(captions, keep.tolist())]

    @torch.no_grad()
    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if LATENT_MEAN_KEY in batch:  # data=latents: the posterior and the text contexts were precomputed
            return self._from_cache(batch)
        with full_precision(self.device.type):  # the frozen VAE in fp32 even under bf16 autocast
            z = self.first_stage.encode_latents(batch["image"].float())  # B×C×h×w, normalised by its own scale
        captions = self.drop_captions(batch["caption"]) if self.training else batch["caption"]
        return z, self.encode_text(captions)

    def _from_cache(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh posterior sample per step (as on the fly) and the cached contexts; a dropped caption's
        context is the empty prompt's, from the text encoder as on the fly."""
        z = sample_cached_latents(batch, self.first_stage.latent_norm)
        context = batch[CONTEXT_KEY]
        if self.training:
            dropped = torch.rand(len(context)) < self.cond_drop_prob
            if dropped.any():
                context = context.clone()
                context[dropped.to(context.device)] = self.encode_text([""]).to(context.dtype)
        return z, context

    def encode_text(self, captions: list[str]) -> torch.Tensor:  # B captions -> B×L×D
        """Each distinct caption is encoded once: the frozen encoder's outputs are kept in a small
        LRU cache (captions repeat across batches, and every dropped caption is "")."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            for caption, context in zip(missing, self.text_encoder(missing)):
                self._text_cache[caption] = context
        for caption in captions:
            self._text_cache.move_to_end(caption)
        contexts = torch.stack([self._text_cache[c] for c in captions])  # before evicting: a batch may hold
        while len(self._text_cache) > self.text_cache_size:  # more distinct captions than the cache
            self._text_cache.popitem(last=False)
        return contexts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        z, context = self.encode(batch)
        self.latent_shape = tuple(z.shape[1:])
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        per_sample, t = self.objective.loss(self.unet, z, context)  # B, B
        loss = per_sample.mean()
        self.nonfinite.observe(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(z))
        self._log_buckets(per_sample.detach(), t)
        return loss

    def _log_buckets(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        # Loss per timestep bucket: where the model is (not) learning, comparable across runs.
        edges = torch.linspace(0, self.objective.schedule.num_timesteps, self.loss_buckets + 1, device=t.device)
        bucket = torch.bucketize(t.float(), edges[1:-1], right=True)
        for b in range(self.loss_buckets):
            mask = bucket == b
            if mask.any():
                lo, hi = int(edges[b]), int(edges[b + 1])
                self.log(f"train/loss_t{lo}-{hi}", per_sample[mask].mean(), on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, optimizer) -> None:
        # The one gradient norm of the step: logged, checked, and used again by `configure_gradient_clipping`.
        grads = [p.grad.detach() for p in self.unet.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        self._grad_norm = grad_norm
        if grad_norm is not None:
            self.log("train/grad_norm", grad_norm, on_step=True, on_epoch=False)
        # Before clipping and the update: a non-finite step loses its gradients, so the step is a no-op.
        self.nonfinite.check([optimizer], [] if grad_norm is None else [grad_norm], self.trainer.strategy)
        self.log("train/nonfinite_steps", self.nonfinite.skipped.float(), on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by norm with the norm `on_before_optimizer_step` already computed (Lightning's own clipping
        would compute it a second time). Value clipping and FSDP (sharded norms) use Lightning's path."""
        by_norm = gradient_clip_algorithm in (None, "norm")
        if gradient_clip_val is None or not by_norm or isinstance(self.trainer.strategy, FSDPStrategy):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params and self._grad_norm is not None:  # no gradients: a skipped non-finite step
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, self._grad_norm)
        return None

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # runs at accumulation boundaries
        # The EMA follows the update at once. In `on_train_batch_end` it would run after the callbacks'
        # hooks (Lightning's order), so a `last.ckpt` saved there would hold the EMA one update behind.
        if self.ema is not None and not self.nonfinite.last_skipped:
            self.ema.update(self.unet)
            self.log("train/ema_decay", self.ema.current_decay(), on_step=True, on_epoch=False)

    # -- validation: fixed timesteps and seeds, so numbers compare across runs --------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        z, context = self.encode(batch)
        generator = torch.Generator(device="cpu").manual_seed(self.val_seed + batch_idx)
        losses = []
        for t_value in self.val_timesteps:
            noise = torch.randn(z.shape, generator=generator).to(z)
            t = torch.full((len(z),), t_value, device=z.device, dtype=torch.long)
            loss_t = self.objective.loss_at(self.sampling_unet, z, context, t, noise).mean()
            self.log(f"val/loss_t{t_value}", loss_t, sync_dist=True, batch_size=len(z))
            losses.append(loss_t)
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True, batch_size=len(z))

    # -- evaluation (ldm_train.lit.evaluation) and images --------------------------------------------
    def evaluation_input(self) -> Callable[[list[str], list[int]], torch.Tensor]:
        """prompts, seeds -> B×3×H×W in [-1, 1]: the EMA UNet with this run's sampler settings."""
        if self.latent_shape is None:
            raise RuntimeError("the latent shape is known after the first training step (or from a checkpoint)")

        def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
            return self.pipeline.generate(prompts, self.sampler, seeds)

        return sample

    # -- images ------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: dict) -> dict[str, torch.Tensor]:
        """Fixed prompts and seeds, EMA weights, classifier-free guidance."""
        if self.latent_shape is None:  # images before the first training step (Lightning's sanity check)
            cached = batch.get(LATENT_MEAN_KEY)  # data=latents: no images
            first = cached if cached is not None else self.first_stage.encode_latents(batch["image"][:1])
            self.latent_shape = first.shape[1:]
        prompts = self.sample_prompts
        return {"samples": self.pipeline.generate(prompts, self.sampler, list(range(len(prompts))))}


def _check_compatible(unet: nn.Module, first_stage: nn.Module, text_encoder: nn.Module) -> None:
    """Fail at start-up, not on the first batch, when the three networks do not fit together."""
    config = getattr(unet, "config", {})
    source = getattr(first_stage, "source", "the first stage")
    if "in_channels" in config and config["in_channels"] != first_stage.embed_dim:
        raise ValueError(
            f"The UNet takes {config['in_channels']} input channels but the VAE ({source}) has "
            f"{first_stage.embed_dim} latent channels: set unet.in_channels=unet.out_channels={first_stage.embed_dim} "
            "or point first_stage.ckpt at a matching phase-1 export."
        )
    dim = getattr(text_encoder, "output_dim", None)
    if "context_dim" in config and dim is not None and config["context_dim"] != dim:
        raise ValueError(
            f"The UNet's context_dim is {config['context_dim']} but the text encoder outputs {dim}-d tokens: "
            f"set context_dim={dim} (the text_encoder config group sets it for you)."
        )
