"""The UNet's spatial transformer: pixels become tokens that attend to each other and to the text context.

Rombach et al. 2022 (LDM), §3.3: cross-attention maps the conditioning τθ(y) into intermediate UNet layers,
Attention(Q, K, V) = softmax(QKᵀ/√d)·V with Q = W_Q·φ(z_t), K = W_K·τθ(y), V = W_V·τθ(y).
Parameter names equal diffusers' `Transformer2DModel` / `BasicTransformerBlock` (and CompVis'
`SpatialTransformer`), so checkpoints of both load without renaming inside these blocks.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ldm_train.nn import Attention

FF_MULT = 4  # feed-forward hidden width = 4 × model width (Vaswani et al. 2017)
GROUPNORM_EPS = 1e-6  # CompVis' Normalize() / diffusers' Transformer2DModel
LAYERNORM_EPS = 1e-5  # torch's LayerNorm default, used by both references


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): x·W ⊙ GELU(x·V), W and V stored as one `proj`."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×N×dim -> B×N×inner_dim
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU → dropout → linear; stored as `net.0.proj`, `net.2` like the references."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * FF_MULT
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×N×dim -> B×N×dim
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the context, feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn2 = Attention(dim, context_dim=context_dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.ff = FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # B×N×dim, B×L×D -> B×N×dim
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm → proj_in → `depth` transformer blocks over the H·W tokens → proj_out, added to the input.

    `use_linear_projection`: proj_in/proj_out are Linear layers on tokens (SD 2.x) instead of 1×1
    convolutions on the feature map (SD 1.x); the same map, stored with different weight shapes.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int = 1,
        use_linear_projection: bool = False,
        groups: int = 32,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, inner_dim)
            self.proj_out = nn.Linear(inner_dim, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, heads, dim_head, context_dim) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # B×C×H×W, B×L×D -> B×C×H×W
        b, _, h, w = x.shape
        tokens = self.norm(x)
        if self.use_linear_projection:
            tokens = self.proj_in(tokens.flatten(2).transpose(1, 2))  # B×HW×inner
        else:
            tokens = self.proj_in(tokens).flatten(2).transpose(1, 2)  # B×HW×inner
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.use_linear_projection:
            out = self.proj_out(tokens).transpose(1, 2).reshape(b, -1, h, w)
        else:
            out = self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w))
        return x + out
