"""A phase-2 model as one original-layout (CompVis / Stable Diffusion 1.x) `.safetensors` checkpoint:

    model.diffusion_model.*            the UNet as in `pipe` (EMA weights when loaded from a checkpoint)
    first_stage_model.*                the VAE
    cond_stage_model.transformer.*     the CLIP text model, SD 1.x names (`...transformer.text_model.*`)

The layout has no place for the settings SD keeps in its LDM yaml; they go to the file's metadata:
`ldm_train.scale_factor` (the yaml's `scale_factor`), `ldm_train.prediction` ("eps" or "v" — `parameterization`),
`ldm_train.text_layer` ("penultimate" means the consumer must use CLIP skip 2) and `ldm_train.unet_config`; a
rectified-flow model (prediction "flow") adds `ldm_train.flow_shift` and `ldm_train.num_train_timesteps`.
Loaders: `load_sd_unet(path, unet_config)`, `load_autoencoder_init(model, path)`, `text_encoder.clip_from_sd`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ldm_train.autoencoder.layouts import SD_VAE_PREFIX, to_sd_state_dict
from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.files import save_safetensors_atomic
from ldm_train.interop.text_encoder import clip_to_sd
from ldm_train.interop.vae import sd_scaling_factor
from ldm_train.text_to_image import TextToImage
from ldm_train.unet.layouts import ours_to_sd

log = logging.getLogger(__name__)


def sd_state_dict(pipe: TextToImage, include_text_encoder: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of `pipe` under its original SD checkpoint name."""
    state = ours_to_sd(pipe.unet.state_dict(), pipe.unet.config)
    state.update({SD_VAE_PREFIX + k: v for k, v in to_sd_state_dict(pipe.first_stage.state_dict()).items()})
    if include_text_encoder:
        state.update(clip_to_sd(pipe.text_encoder))
    return state


def sd_metadata(pipe: TextToImage) -> dict[str, str]:
    """What an SD loader needs besides the tensors (string values: safetensors metadata)."""
    metadata = {
        "format": "pt",
        "ldm_train.scale_factor": repr(sd_scaling_factor(pipe.first_stage)),
        "ldm_train.prediction": pipe.prediction,
        "ldm_train.unet_config": json.dumps(pipe.unet.config),
        "ldm_train.latent_shape": json.dumps(list(pipe.latent_shape)),
    }
    layer = getattr(pipe.text_encoder, "layer", None)
    if layer is not None:
        metadata["ldm_train.text_layer"] = layer
    if isinstance(pipe.schedule, FlowSchedule):  # prediction "flow": v = ε − x_0 on x_t = (1 − t)·x_0 + t·ε
        metadata["ldm_train.flow_shift"] = repr(pipe.schedule.shift)
        metadata["ldm_train.num_train_timesteps"] = str(pipe.schedule.num_timesteps)
    return metadata


def export_sd(
    pipe: TextToImage, out_file: str | Path, include_text_encoder: bool = True, overwrite: bool = False
) -> Path:
    """Write `pipe` as one original-layout `.safetensors` file (atomically); returns its path.

    `include_text_encoder=False` leaves `cond_stage_model.*` out (needed for non-CLIP encoders, which the layout
    cannot hold)."""
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise ValueError(
            f"{out_file}: the SD export is a .safetensors file; give the output path that suffix."
        )
    metadata = sd_metadata(pipe)  # checks the latent norm before anything is written
    if getattr(pipe.text_encoder, "layer", "last") == "penultimate" and include_text_encoder:
        log.warning(
            "%s: the text encoder uses CLIP's penultimate layer; SD 1.x tools must load it with CLIP skip 2 "
            "(the file stores all layers, as SD 1.x does)",
            out_file,
        )
    if isinstance(pipe.schedule, FlowSchedule):
        log.warning(
            "%s: a rectified-flow model (diffusion=flow); SD 1.x tools assume ε/v-prediction on a VP schedule and "
            "need a flow sampler (metadata ldm_train.prediction=flow, ldm_train.flow_shift); format=diffusers "
            "writes the matching scheduler",
            out_file,
        )
    save_safetensors_atomic(sd_state_dict(pipe, include_text_encoder), out_file, metadata, overwrite=overwrite)
    log.info("Exported an original-layout SD checkpoint to %s", out_file)
    return out_file
