"""The one attention implementation of the project (self and cross), on `F.scaled_dot_product_attention`.

Parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`) equal those of diffusers' `Attention`, so its weights
load without renaming. `SpatialSelfAttention` is the autoencoder's image-token wrapper around it.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head scaled dot-product attention, softmax(QKᵀ/√d)·V (Vaswani et al. 2017, eq. 1).

    Self-attention when `context` is None; cross-attention over `context` (e.g. text tokens) otherwise.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 1,
        dim_head: int | None = None,
        bias: bool = False,
        out_bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim_head is None:
            if query_dim % heads != 0:
                raise ValueError(
                    f"query_dim={query_dim} is not divisible by heads={heads}; pass dim_head explicitly."
                )
            dim_head = query_dim // heads
        context_dim = query_dim if context_dim is None else context_dim
        inner_dim = heads * dim_head
        self.heads = heads
        self.context_dim = context_dim

        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        # A Sequential so the output projection is stored as `to_out.0`, as in diffusers and CompVis.
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(dropout))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:  # B×N×(h·d) -> B×h×N×d
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: B×N×Cq, context: B×M×Cc (None: self-attention), context_mask: B×M bool (True = attend) -> B×N×Cq
        context = x if context is None else context
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"Attention expects context with {self.context_dim} channels, got {context.shape[-1]}; "
                "set context_dim to the text encoder's hidden size."
            )
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        # B×1×1×M: broadcast over heads and queries.
        mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # B×h×N×d
        return self.to_out(out.transpose(1, 2).flatten(2))


class SpatialSelfAttention(Attention):
    """GroupNorm, then single-head self-attention over the H·W pixels as tokens, added back to the input.

    The autoencoder's attention block (LDM, Rombach et al. 2022): diffusers' VAE `Attention` with biases, under
    its parameter names (`group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`).
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__(channels, heads=1, dim_head=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×H×W -> B×C×H×W
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # B×HW×C
        out = super().forward(tokens).transpose(1, 2).reshape(b, c, h, w)
        return x + out
