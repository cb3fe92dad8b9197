"""Frozen text encoders: prompts -> B×L×D context for the UNet's cross-attention."""

from ldm_train.conditioning.clip_bpe import build_clip_tokenizer, write_tiny_clip
from ldm_train.conditioning.clip_text import CLIPTextEncoder
from ldm_train.conditioning.hf_text import HFTextEncoder, MiniLMTextEncoder
from ldm_train.conditioning.text_encoder import FrozenTextEncoder
from ldm_train.nn.frozen import trainable_parameters

__all__ = [
    "CLIPTextEncoder",
    "FrozenTextEncoder",
    "HFTextEncoder",
    "MiniLMTextEncoder",
    "build_clip_tokenizer",
    "trainable_parameters",
    "write_tiny_clip",
]
