"""Our frozen text encoders as the `text_encoder/` + `tokenizer/` of a diffusers Stable Diffusion pipeline,
and CLIP text weights in the original SD 1.x checkpoint naming.

What `StableDiffusionPipeline.encode_prompt` computes (diffusers 0.3x–0.4x), for `clip_skip=None`:
  ids  = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
  mask = the tokenizer's attention_mask if `text_encoder.config.use_attention_mask` is true, else None
  context = text_encoder(ids, attention_mask=mask)[0]        (last_hidden_state)
and the same for the unconditional prompt "". So the export must make
  - `model_max_length` equal our encoder's `max_length` (we pad every prompt to it);
  - CLIP: no attention mask (we pass only the ids, as SD does); layer="penultimate" (SD 2.x) is the
    last-layer output of the model with its final block removed — how SD 2.x's diffusers checkpoints
    store OpenCLIP-H (23 of 24 layers), so the pipeline needs no `clip_skip`;
  - other encoders (BERT/MiniLM, ...): `use_attention_mask=True` (we pass the mask; padding is not causal
    there), and the model's class must be one `from_pretrained` can find in transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import transformers
from transformers import CLIPTextModel, PreTrainedModel, PreTrainedTokenizerBase

from ldm_train.conditioning.clip_text import CLIPTextEncoder
from ldm_train.conditioning.text_encoder import FrozenTextEncoder

# SD 1.x's FrozenCLIPEmbedder holds a transformers CLIPTextModel as `.transformer`, which (in transformers 4)
# nests everything under `.text_model`; transformers 5's CLIPTextModel no longer does.
SD_CLIP_PREFIX = "cond_stage_model.transformer."
CLIP_INNER = "text_model."


def _last_layer_dropped(model: CLIPTextModel) -> CLIPTextModel:
    """The CLIP text model without its final transformer block (final LayerNorm kept)."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers -= 1
    last = f"encoder.layers.{config.num_hidden_layers}."
    state = {k: v for k, v in model.state_dict().items() if last not in k}
    truncated = CLIPTextModel(config).to(device=model.device, dtype=model.dtype).eval()
    truncated.load_state_dict(state, strict=True)
    return truncated


def pipeline_text_encoder(encoder: FrozenTextEncoder) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The transformers (model, tokenizer) whose diffusers SD-pipeline context equals `encoder(prompts)`."""
    tokenizer = copy.copy(encoder.tokenizer)  # shallow: a deep copy of CLIP's vocabulary costs a second
    tokenizer.model_max_length = encoder.max_length
    if isinstance(encoder, CLIPTextEncoder):
        model = _last_layer_dropped(encoder.model) if encoder.layer == "penultimate" else encoder.model
        if getattr(model.config, "use_attention_mask", False):
            model = copy.deepcopy(model)
            model.config.use_attention_mask = False
        return model, tokenizer
    model = encoder.model
    class_name = type(model).__name__
    if not isinstance(model, PreTrainedModel) or not hasattr(transformers, class_name):
        raise ValueError(
            f"The text encoder's model is a {class_name}, which transformers' from_pretrained cannot rebuild "
            "(e.g. the encoder half of an encoder-decoder model); a diffusers pipeline could not load it. "
            "Export a model conditioned on a CLIP or an encoder-only Hugging Face text model."
        )
    model = copy.copy(model)  # a shallow copy: shares the weights, gets its own config below
    model.config = copy.deepcopy(model.config)
    model.config.use_attention_mask = True
    return model, tokenizer


def clip_to_sd(encoder: FrozenTextEncoder) -> dict[str, torch.Tensor]:
    """CLIP text weights under SD 1.x's names: `cond_stage_model.transformer.text_model.*`."""
    if not isinstance(encoder, CLIPTextEncoder):
        raise ValueError(
            f"{type(encoder).__name__} is not a CLIP text encoder; the original SD checkpoint layout has a place "
            "only for CLIP (cond_stage_model.transformer.*). Export to diffusers (format=diffusers) instead, "
            "or leave the text encoder out of the file (include_text_encoder=False)."
        )
    return {
        SD_CLIP_PREFIX + CLIP_INNER + k.removeprefix(CLIP_INNER): v
        for k, v in encoder.model.state_dict().items()
    }


def clip_from_sd(state: Mapping[str, torch.Tensor], model: CLIPTextModel) -> dict[str, torch.Tensor]:
    """The `cond_stage_model.transformer.*` tensors of an SD 1.x checkpoint as `model`'s state dict."""
    nested = hasattr(model, "text_model")
    out = {}
    for key, value in state.items():
        if key.startswith(SD_CLIP_PREFIX) and not key.endswith("position_ids"):  # an old persisted buffer
            inner = key[len(SD_CLIP_PREFIX) :].removeprefix(CLIP_INNER)
            out[CLIP_INNER + inner if nested else inner] = value
    if not out:
        raise ValueError(f"No CLIP text weights under {SD_CLIP_PREFIX!r}; is this an SD 1.x checkpoint?")
    return out
