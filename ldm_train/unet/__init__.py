"""The diffusion UNet (ResBlocks + spatial transformers with cross-attention) and weight converters."""

from ldm_train.unet.layouts import from_diffusers_config, ours_to_sd, sd_to_ours, to_diffusers_config
from ldm_train.unet.pretrained import load_diffusers_unet, load_sd_unet, unet_from_diffusers
from ldm_train.unet.unet import UNet

__all__ = [
    "UNet",
    "from_diffusers_config",
    "load_diffusers_unet",
    "load_sd_unet",
    "ours_to_sd",
    "sd_to_ours",
    "to_diffusers_config",
    "unet_from_diffusers",
]
