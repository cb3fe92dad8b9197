"""Sinusoidal timestep embedding and the MLP that lifts it to the UNet's embedding width.

Numerically equal to diffusers' `get_timestep_embedding` / `Timesteps` / `TimestepEmbedding`
(parameters `linear_1`, `linear_2`). SD's convention is `flip_sin_to_cos=True, downscale_freq_shift=0`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# The Transformer positional encoding's longest wavelength (Vaswani et al. 2017, §3.5).
DEFAULT_MAX_PERIOD = 10_000


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    max_period: float = DEFAULT_MAX_PERIOD,
) -> torch.Tensor:  # B -> B×dim (float32)
    """Frequencies ω_i = max_period^(−i / (dim/2 − shift)), embedding [cos(tω), sin(tω)] (or [sin, cos]).

    Timesteps may be fractional (continuous-time / sigma conditioning). An odd `dim` is zero-padded by one.
    """
    if timesteps.ndim != 1:
        raise ValueError(
            f"timestep_embedding expects a 1-D tensor of B timesteps, got shape {tuple(timesteps.shape)}."
        )
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    angles = timesteps[:, None].float() * freqs[None, :]  # B×half
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class SinusoidalTimestepEmbedding(nn.Module):
    """Module form of `timestep_embedding` (no parameters), for use inside `nn.Sequential`-style networks."""

    def __init__(self, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0):
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:  # B -> B×dim
        return timestep_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.downscale_freq_shift)


class TimestepMLP(nn.Module):
    """Linear → SiLU → Linear on the sinusoidal embedding (the DDPM/SD `time_embed`)."""

    def __init__(self, in_channels: int, embed_dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim if out_dim is None else out_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:  # B×in_channels -> B×embed_dim
        return self.linear_2(F.silu(self.linear_1(emb)))
