"""Pre-activation residual block shared by the autoencoder and the diffusion UNet.

Parameter names (`norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`) equal those of
diffusers' `ResnetBlock2D`, so its weights load without renaming.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3, twice, plus a skip (1×1 conv when the channel count changes).

    With `temb_channels`, a timestep embedding conditions the block between the two convolutions:
    added as a per-channel bias (DDPM, Ho et al. 2020), or with `scale_shift=True` as FiLM after the
    second norm, `h = norm(h)·(1 + scale) + shift` (Dhariwal & Nichol 2021, "AdaGN").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = None,
        dropout: float = 0.0,
        groups: int = 32,
        eps: float = 1e-6,
        scale_shift: bool = False,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if scale_shift and temb_channels is None:
            raise ValueError(
                "ResBlock(scale_shift=True) needs temb_channels; pass the timestep-embedding width."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_shift = scale_shift

        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            # scale-shift needs two vectors (scale and shift) per channel, the additive form one.
            self.time_emb_proj = nn.Linear(temb_channels, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # x: B×Cin×H×W, temb: B×T -> B×Cout×H×W
        h = self.conv1(F.silu(self.norm1(x)))

        if self.time_emb_proj is None:
            if temb is not None:
                raise ValueError("ResBlock got a timestep embedding but was built with temb_channels=None.")
            h = self.norm2(h)
        else:
            if temb is None:
                raise ValueError(
                    "ResBlock was built with temb_channels; pass temb (B×temb_channels) to forward."
                )
            emb = self.time_emb_proj(F.silu(temb))[:, :, None, None]  # B×(1|2)·Cout×1×1
            if self.scale_shift:
                scale, shift = emb.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + emb)

        h = self.conv2(self.dropout(F.silu(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h
