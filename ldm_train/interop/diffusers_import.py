"""A diffusers Stable Diffusion folder (SD 1.x / 2.x layout, or an `export_diffusers` output) as our TextToImage,
to sample from it with our samplers or to start a fine-tune from its weights.

The text encoder must be CLIP used as the pipeline uses it: last hidden state, no attention mask (SD 2.x folders
store OpenCLIP-H with its last block removed, so "last" there is SD 2.x's penultimate layer).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ldm_train.autoencoder.pretrained import autoencoder_from_diffusers
from ldm_train.conditioning.clip_text import CLIPTextEncoder
from ldm_train.interop.scheduler import prediction_from_config, schedule_from_config
from ldm_train.text_to_image import TextToImage
from ldm_train.unet.pretrained import load_diffusers_unet

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"


def text_to_image_from_diffusers(folder: str | Path, device: str | torch.device = "cpu") -> TextToImage:
    """Our TextToImage holding the UNet, VAE, CLIP text encoder, noise schedule and prediction type of a diffusers
    `StableDiffusionPipeline` folder; the latent size is the UNet's `sample_size`."""
    folder = Path(folder)
    if not (folder / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"{folder} has no {MODEL_INDEX}: pass a diffusers Stable Diffusion folder (save_pretrained / Hub download)."
        )
    components = json.loads((folder / MODEL_INDEX).read_text())
    text_class = components.get("text_encoder", [None, None])[1]
    if text_class != "CLIPTextModel":
        raise ValueError(
            f"{folder}: text encoder {text_class!r}; only CLIPTextModel pipelines (SD 1.x / 2.x) can be imported. "
            "Build a TextToImage from its parts (load_diffusers_unet, autoencoder_from_diffusers, a text encoder)."
        )
    tokenizer_config = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    text_config = json.loads((folder / "text_encoder" / "config.json").read_text())
    if text_config.get("use_attention_mask"):
        raise ValueError(
            f"{folder}: its CLIP text encoder is used with an attention mask; CLIPTextEncoder passes only the ids "
            "(as SD does), so the contexts would differ."
        )
    positions = int(text_config["max_position_embeddings"])
    text_encoder = CLIPTextEncoder(
        pretrained=str(folder),
        model_subfolder="text_encoder",
        tokenizer_subfolder="tokenizer",
        # Tokenizers without a length limit store a huge model_max_length; CLIP has a fixed number of positions.
        max_length=min(int(tokenizer_config.get("model_max_length", positions)), positions),
    )
    unet = load_diffusers_unet(folder / "unet")
    first_stage = autoencoder_from_diffusers(folder / "vae")
    scheduler = json.loads((folder / SCHEDULER_CONFIG).read_text())
    size = json.loads((folder / "unet" / "config.json").read_text())["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return TextToImage(
        unet,
        text_encoder,
        first_stage,
        schedule_from_config(scheduler),
        prediction_from_config(scheduler),
        (unet.config["in_channels"], height, width),
        device,
    )
