"""Interoperability with the Stable Diffusion ecosystem: export to diffusers folders and original-layout SD
checkpoints, and import diffusers SD folders as our TextToImage."""

from ldm_train.interop.diffusers_export import export_diffusers, to_diffusers_pipeline
from ldm_train.interop.diffusers_import import text_to_image_from_diffusers
from ldm_train.interop.scheduler import SamplerSettings, diffusers_timesteps, scheduler_config
from ldm_train.interop.sd_export import export_sd, sd_state_dict

__all__ = [
    "SamplerSettings",
    "diffusers_timesteps",
    "export_diffusers",
    "export_sd",
    "scheduler_config",
    "sd_state_dict",
    "text_to_image_from_diffusers",
    "to_diffusers_pipeline",
]
