"""(d) of scripts/bench.py: a whole phase-2 training step as each framework runs it by default (data → VAE encode
→ text encode → UNet step), ours also from the latent cache; on the networks of scripts/bench_models.py."""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from bench_models import LR, Pair, Step, autocast
from torch import nn

from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.speed import SpeedSettings, build_adamw, prepare_module

CAPTIONS = [f"a photo of a {name}" for name in ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal",
                                                   "shirt", "sneaker", "bag", "ankle boot")]  # Fashion-MNIST's


def phase2_steps(pair: Pair, speed: SpeedSettings, text_encoder: nn.Module, fresh_captions: bool = False,
                 dtype: torch.dtype = torch.float32) -> tuple[Step, Step, Step]:  # fmt: skip
    """(ours on the fly, theirs on the fly, ours from the latent cache): each side's default phase-2 step.

    Ours is LatentDiffusionModule's path (fp32 VAE encode, caption dropout, the frozen encoder's LRU text cache,
    the objective's loss, AdamW, EMA update); theirs is diffusers' train_text_to_image.py (VAE encode and text
    encode every batch, ε-MSE, AdamW, no EMA by default). The cache batch holds the same images' posterior.
    bf16 (`dtype`): each side's mixed precision. Ours runs the step under autocast (the VAE encodes in fp32);
    theirs, as `--mixed_precision=bf16` does, casts the frozen VAE and text encoder's weights to bf16 (a copy of
    the text encoder, which ours shares) and runs the UNet under autocast.
    `fresh_captions`: every step's captions are new (a caption-per-image dataset: the LRU never hits);
    otherwise Fashion-MNIST's ten class captions repeat (after the first step the LRU always hits)."""
    from ldm_train.diffusion.objective import DiffusionObjective
    from ldm_train.lit.latent_diffusion import LatentDiffusionModule

    size, device = pair.size, pair.device
    images = pair.inputs["image"].new_empty(size.unet_batch, 3, size.image_size, size.image_size).uniform_(-1, 1)
    steps = itertools.count()

    def captions() -> list[str]:
        if not fresh_captions:
            return [CAPTIONS[i % len(CAPTIONS)] for i in range(size.unet_batch)]
        step = next(steps)
        return [f"{CAPTIONS[i % len(CAPTIONS)]}, number {step * size.unet_batch + i}" for i in range(size.unet_batch)]

    module = LatentDiffusionModule(pair.unet, pair.vae, text_encoder, DiffusionObjective(NoiseSchedule.scaled_linear()),
                                   optimizer=lambda params: build_adamw(params, LR, speed), ema_decay=0.9999,
                                   text_cache_size=len(CAPTIONS)).to(device).train()  # fmt: skip
    prepare_module(module.unet, speed)
    ours_opt = module.configure_optimizers()
    with torch.no_grad():
        posterior = pair.vae.encode(images)
        first = captions()
        cached = {"latent_mean": posterior.mean, "latent_std": posterior.std,
                  "context": text_encoder(first).float(), "caption": first}  # fmt: skip

    def ours(batch: dict) -> None:
        ours_opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            z, context = module.encode(batch)
            loss = module.objective.loss(module.unet, z, context)[0].mean()
        loss.backward()
        ours_opt.step()
        module.ema.update(module.unet)

    their_text_encoder = text_encoder
    if dtype != torch.float32:  # their frozen networks' weights in the training dtype
        pair.their_vae.to(dtype)
        their_text_encoder = copy.deepcopy(text_encoder).to(dtype)

    their_opt = torch.optim.AdamW(pair.their_unet.parameters(), lr=LR)
    schedule = NoiseSchedule.scaled_linear()
    alphas_bar = schedule.alphas_cumprod.to(device, torch.float32)

    def theirs() -> None:
        their_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            posterior = pair.their_vae.encode(images.to(dtype)).latent_dist
            z = posterior.sample() * pair.their_vae.config.scaling_factor
            context = their_text_encoder(captions())
        noise = torch.randn_like(z)
        t = torch.randint(0, schedule.num_timesteps, (len(z),), device=device)
        a = alphas_bar[t].view(-1, 1, 1, 1).to(z.dtype)
        z_t = a.sqrt() * z + (1 - a).sqrt() * noise  # DDPMScheduler.add_noise (Ho et al. 2020, eq. 4)
        with autocast(device, dtype):
            pred = pair.their_unet(z_t, t, encoder_hidden_states=context).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        their_opt.step()

    return (lambda: ours({"image": images, "caption": captions()})), theirs, (lambda: ours(cached))
