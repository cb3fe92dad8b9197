"""Build our UNet from pretrained weights: a diffusers UNet folder or an original Stable Diffusion checkpoint.

Loads are strict: a missing or unexpected parameter raises, naming it (PyTorch's `load_state_dict` message).
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ldm_train.files import read_state_dict
from ldm_train.unet.layouts import SD_PREFIX, from_diffusers_config, sd_to_ours
from ldm_train.unet.unet import UNet

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def unet_from_diffusers(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> UNet:
    """Our UNet equal to a diffusers `UNet2DConditionModel` with this config and state dict."""
    unet = UNet(**from_diffusers_config(config))
    unet.load_state_dict(state_dict, strict=True)
    return unet


def load_diffusers_unet(folder: str | Path) -> UNet:
    """A diffusers `save_pretrained` UNet folder, e.g. the `unet/` folder of an SD pipeline download."""
    folder = Path(folder)
    weights = next((folder / name for name in DIFFUSERS_WEIGHTS if (folder / name).is_file()), None)
    if not (folder / DIFFUSERS_CONFIG).is_file() or weights is None:
        raise FileNotFoundError(
            f"{folder} is not a diffusers UNet folder: it needs {DIFFUSERS_CONFIG} and one of {DIFFUSERS_WEIGHTS} "
            "(the `unet/` subfolder of a Stable Diffusion pipeline)."
        )
    config = json.loads((folder / DIFFUSERS_CONFIG).read_text())
    return unet_from_diffusers(config, read_state_dict(weights))


def load_sd_unet(path: str | Path, config: Mapping[str, Any], prefix: str = SD_PREFIX) -> UNet:
    """The UNet of an original SD checkpoint (.ckpt or .safetensors), built as `UNet(**config)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Stable Diffusion checkpoint {path} does not exist.")
    unet = UNet(**config)
    unet.load_state_dict(sd_to_ours(read_state_dict(path), config, prefix), strict=True)
    return unet
