"""A phase-2 model as a diffusers `StableDiffusionPipeline` folder:

    pipe = TextToImage.from_checkpoint("outputs/ldm/<date>/<time>")
    export_diffusers(pipe, "exports/my-model")
    StableDiffusionPipeline.from_pretrained("exports/my-model")(["a photo of a bag"], guidance_scale=3.0)

The folder holds `unet/` (the UNet as in `pipe`, i.e. EMA weights when loaded from a checkpoint), `vae/` (with
the latent scale as `scaling_factor`), `text_encoder/` + `tokenizer/` (see text_encoder.py for how the pipeline's
context is made equal to ours), `scheduler/` (the sampler settings, see scheduler.py) and `model_index.json`
(no safety checker, no feature extractor). Given the same prompts, per-image generators, step count and guidance
scale, the pipeline's images equal `generate(...)` with `GuidedSampler(**asdict(settings))` up to float rounding
— except for the two diffusers differences documented in scheduler.py. A rectified-flow model is exported with a
flow scheduler (DPMSolverMultistepScheduler with use_flow_sigmas, see scheduler.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from torch import nn

from ldm_train.autoencoder.layouts import to_diffusers_state_dict
from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.files import publish_folder
from ldm_train.interop.scheduler import SamplerSettings, scheduler_config
from ldm_train.interop.text_encoder import pipeline_text_encoder
from ldm_train.interop.vae import diffusers_vae_config
from ldm_train.text_to_image import TextToImage
from ldm_train.unet.layouts import to_diffusers_config

log = logging.getLogger(__name__)


def _with_weights(model_cls: type[nn.Module], config: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """`model_cls(**config)` holding `state` (shared, not copied): built on the meta device, so no memory or
    time goes into a random initialisation that would be overwritten; the load is strict."""
    with torch.device("meta"):
        model = model_cls.from_config(config)
    model.load_state_dict(state, strict=True, assign=True)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"{model_cls.__name__} tensors not covered by the state dict: {left_on_meta[:5]}")
    return model.eval()


def _sample_size(latent_shape: tuple[int, ...]) -> int | list[int]:
    height, width = latent_shape[-2:]
    return height if height == width else [height, width]


def to_diffusers_pipeline(
    pipe: TextToImage, settings: SamplerSettings | None = None
) -> StableDiffusionPipeline:
    """The diffusers pipeline equal to `pipe` (in memory; its networks share `pipe`'s weights)."""
    unet_state = {k: v.detach() for k, v in pipe.unet.state_dict().items()}
    unet_config = {**to_diffusers_config(pipe.unet.config), "sample_size": _sample_size(pipe.latent_shape)}
    unet = _with_weights(UNet2DConditionModel, unet_config, unet_state)
    vae_state = to_diffusers_state_dict({k: v.detach() for k, v in pipe.first_stage.state_dict().items()})
    vae = _with_weights(DiffusersAutoencoderKL, diffusers_vae_config(pipe.first_stage), vae_state)
    text_encoder, tokenizer = pipeline_text_encoder(pipe.text_encoder)
    scheduler_name, config = scheduler_config(pipe.schedule, pipe.prediction, settings)
    scheduler = getattr(diffusers, scheduler_name).from_config(config)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export_diffusers(
    pipe: TextToImage, out_dir: str | Path, settings: SamplerSettings | None = None, overwrite: bool = False
) -> Path:
    """Write `pipe` as a `StableDiffusionPipeline.from_pretrained` folder (safetensors); returns the folder.
    `settings` chooses the exported scheduler (default: GuidedSampler's defaults, DPM-Solver++ 2M).

    The folder appears complete or not at all; an existing one is replaced only with `overwrite=True`.
    """
    settings = settings or SamplerSettings()
    diffusers_pipe = to_diffusers_pipeline(pipe, settings)
    if isinstance(pipe.schedule, FlowSchedule):
        log.info(
            "Flow model: the pipeline samples as our %s with spacing='trailing', quantize_t=True (scheduler.py)",
            settings.sampler,
        )
    elif settings.sampler == "dpmpp_2m" and settings.spacing not in ("trailing",) and not settings.karras:
        log.info(
            "DPMSolverMultistepScheduler spaces %s timesteps differently from our sampler; for identical "
            "images pass timesteps=ldm_train.interop.diffusers_timesteps(...) to the pipeline",
            settings.spacing or "leading",
        )
    out = publish_folder(
        lambda tmp: diffusers_pipe.save_pretrained(tmp, safe_serialization=True), out_dir, overwrite
    )
    log.info(
        "Exported a diffusers StableDiffusionPipeline to %s (scheduler %s)",
        out,
        type(diffusers_pipe.scheduler).__name__,
    )
    return out
