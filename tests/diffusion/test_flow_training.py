"""A tiny phase-2 run with diffusion=flow (configs/diffusion/flow.yaml), in process on the CPU: the validation loss
at fixed timesteps and seeds goes down, the loss buckets are logged, and the module samples images."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.conditioning import CLIPTextEncoder, write_tiny_clip
from ldm_train.diffusion.flow import FlowObjective
from ldm_train.lit.latent_diffusion import LatentDiffusionModule
from ldm_train.sampling import GuidedSampler
from ldm_train.unet import UNet

FLOW_CONFIG = Path(__file__).parents[2] / "ldm_train" / "configs" / "diffusion" / "flow.yaml"
IMAGES, RESOLUTION, BATCH, STEPS = 8, 32, 8, 12
LOGVAR_MIN = -30.0  # DiagonalGaussian's clamp: a posterior std of 3e-7
CAPTIONS = ["a photo of a bag", "a photo of a sneaker"]


def _dataset() -> list[dict]:
    """Two classes of smooth images (horizontal vs vertical ramps), a caption each: learnable in a few steps."""
    ramp = torch.linspace(-0.8, 0.8, RESOLUTION)
    images = [ramp.view(1, 1, -1).expand(3, RESOLUTION, -1), ramp.view(1, -1, 1).expand(3, -1, RESOLUTION)]
    return [{"image": images[i % 2].clone(), "caption": CAPTIONS[i % 2]} for i in range(IMAGES)]


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    return CLIPTextEncoder(pretrained=str(write_tiny_clip(tmp_path_factory.mktemp("clip"))))


def test_flow_phase2_lowers_its_loss_and_samples(text_encoder, tmp_path):
    torch.manual_seed(0)
    objective = instantiate(OmegaConf.load(FLOW_CONFIG))
    assert isinstance(objective, FlowObjective) and objective.timestep_sampling == "logit_normal"
    unet = UNet(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_levels=(1,), num_heads=4, norm_groups=8, context_dim=text_encoder.output_dim)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=RESOLUTION,
                        norm_groups=4)
    with torch.no_grad():  # an untrained VAE's posterior is noise; make it a fixed code of unit std, as a trained one
        half = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[half:].zero_()
        vae.quant_conv.bias[half:].fill_(LOGVAR_MIN)
        images = torch.stack([item["image"] for item in _dataset()])
        vae.latent_norm.set_from_statistics(float(vae.encode(images).mean.std()))
    module = LatentDiffusionModule(
        unet, vae, text_encoder, objective, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
        ema_decay=None, cond_drop_prob=0.1, sample_prompts=CAPTIONS,
        sampler=GuidedSampler("dpmpp_2m", num_steps=8, guidance_scale=2.0),
    )
    loader = DataLoader(_dataset(), batch_size=BATCH, shuffle=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    before = trainer.validate(module, loader, verbose=False)[0]["val/loss"]
    trainer.fit(module, loader)
    buckets = [key for key in trainer.callback_metrics if key.startswith("train/loss_t")]
    after = trainer.validate(module, loader, verbose=False)[0]["val/loss"]
    assert after < 0.85 * before, f"val/loss {before:.4f} -> {after:.4f}"
    assert buckets and set(buckets) <= {f"train/loss_t{lo}-{lo + 250}" for lo in range(0, 1000, 250)}, buckets

    images = module.log_images(next(iter(loader)))["samples"]
    assert images.shape == (len(CAPTIONS), 3, RESOLUTION, RESOLUTION) and torch.isfinite(images).all()
    assert (images[0] - images[1]).abs().max() > 1e-3, "the prompt changes the sample"


def test_a_vp_only_sampler_fails_at_start_up_with_diffusion_flow(text_encoder):
    unet = UNet(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1,), num_res_blocks=1,
                attention_levels=(0,), num_heads=2, norm_groups=8, context_dim=text_encoder.output_dim)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=RESOLUTION,
                        norm_groups=4)
    with pytest.raises(ValueError, match="'ddpm' cannot sample a rectified-flow model.*euler, heun, dpmpp_2m"):
        LatentDiffusionModule(unet, vae, text_encoder, instantiate(OmegaConf.load(FLOW_CONFIG)),
                              optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                              sampler=GuidedSampler("ddpm", num_steps=4))
