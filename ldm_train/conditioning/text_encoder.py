"""Common machinery of the frozen text encoders: prompts -> tokens -> B×L×D context for cross-attention."""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import BatchEncoding, PreTrainedTokenizerBase

from ldm_train.nn.frozen import Frozen


class FrozenTextEncoder(Frozen):
    """A pretrained tokenizer + transformer, frozen; subclasses choose which hidden states become the context.

    Every prompt is padded / truncated to `max_length` tokens, so contexts of different batches (and the
    empty-prompt context of classifier-free guidance) share one shape B×max_length×output_dim.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: nn.Module, max_length: int):
        super().__init__()
        limit = getattr(model.config, "max_position_embeddings", max_length)
        if not 0 < max_length <= limit:
            raise ValueError(
                f"max_length={max_length} must be in 1..{limit} (the text model's position count)."
            )
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.freeze()

    @property
    def output_dim(self) -> int:
        """Width D of the context; the UNet's `context_dim`."""
        return self.model.config.hidden_size

    def tokenize(self, prompts: Sequence[str]) -> BatchEncoding:  # B prompts -> ids, attention_mask B×L
        if isinstance(prompts, str):
            raise ValueError(
                f"Text encoders take a list of prompts, got the single string {prompts!r}; wrap it in []."
            )
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return tokens.to(self.device)

    def encode_tokens(self, tokens: BatchEncoding) -> torch.Tensor:  # B×L ids -> B×L×D
        raise NotImplementedError(f"{type(self).__name__} must implement encode_tokens.")

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:  # B prompts ("" = unconditional) -> B×L×D
        return self.encode_tokens(self.tokenize(prompts))
