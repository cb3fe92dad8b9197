"""Frozen CLIP text encoder (transformers `CLIPTextModel`), the conditioning of Stable Diffusion."""

from typing import Literal

import torch
from transformers import AutoTokenizer, BatchEncoding, CLIPTextModel

from ldm_train.conditioning.clip_bpe import CLIP_CONTEXT_LENGTH
from ldm_train.conditioning.hub import load_pretrained
from ldm_train.conditioning.text_encoder import FrozenTextEncoder
from ldm_train.constraints import PositiveInt

LAYERS = ("last", "penultimate")


class CLIPTextEncoder(FrozenTextEncoder):
    """Per-token CLIP text features, B×77×D.

    `layer="last"`: the final hidden states (after the final LayerNorm), as SD 1.x uses them.
    `layer="penultimate"`: the second-to-last block's output passed through the final LayerNorm, as SD 2.x
    does (OpenCLIP ViT-H; the last block's features are too specialised to CLIP's contrastive objective).
    `pretrained` is a Hub id or a `save_pretrained` folder holding the model and the tokenizer, or a
    Stable Diffusion pipeline (Hub id or folder) with `model_subfolder="text_encoder"`,
    `tokenizer_subfolder="tokenizer"`.
    """

    def __init__(
        self,
        pretrained: str = "openai/clip-vit-large-patch14",
        layer: Literal["last", "penultimate"] = "last",
        max_length: PositiveInt = CLIP_CONTEXT_LENGTH,
        cache_dir: str | None = None,
        model_subfolder: str = "",
        tokenizer_subfolder: str = "",
    ):
        if layer not in LAYERS:
            raise ValueError(f"CLIPTextEncoder layer must be one of {LAYERS}, got {layer!r}.")
        model = load_pretrained(
            CLIPTextModel.from_pretrained, pretrained, "CLIP text model", cache_dir, model_subfolder
        )
        # AutoTokenizer, not CLIPTokenizer: the latter silently builds an empty vocabulary when files are missing.
        tokenizer = load_pretrained(
            AutoTokenizer.from_pretrained, pretrained, "CLIP tokenizer", cache_dir, tokenizer_subfolder
        )
        if len(tokenizer) != model.config.vocab_size:
            raise ValueError(
                f"The tokenizer in {pretrained!r} has {len(tokenizer)} tokens but its CLIP text model "
                f"{model.config.vocab_size}; save the matching CLIP tokenizer next to the model."
            )
        super().__init__(tokenizer, model, max_length)
        self.layer = layer

    def encode_tokens(self, tokens: BatchEncoding) -> torch.Tensor:  # B×L ids -> B×L×D
        # Only the ids, as SD does: CLIP's causal mask already keeps tokens from attending to the padding after them.
        out = self.model(input_ids=tokens["input_ids"], output_hidden_states=self.layer == "penultimate")
        if self.layer == "last":
            return out.last_hidden_state
        text_model = getattr(self.model, "text_model", self.model)  # transformers 4 nests it, 5 does not
        return text_model.final_layer_norm(out.hidden_states[-2])
