"""Resolution changes by two: strided-conv downsampling and nearest-neighbour + conv upsampling.

The convolution is stored as `conv`, as in diffusers' `Downsample2D` / `Upsample2D` and CompVis.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# The CompVis autoencoder pads right/bottom only, so a stride-2 3×3 conv halves even sizes exactly.
ASYMMETRIC_PAD = (0, 1, 0, 1)


class Downsample(nn.Module):
    """3×3 conv with stride 2.

    `pad_mode="asymmetric"`: zero-pad (0, 1, 0, 1) then conv with padding 0 (the LDM/SD autoencoder).
    `pad_mode="symmetric"`: conv with padding 1 (the SD UNet). Same output size, different pixel alignment,
    so a checkpoint only works with the mode it was trained with.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        pad_mode: Literal["asymmetric", "symmetric"] = "symmetric",
    ):
        super().__init__()
        if pad_mode not in ("asymmetric", "symmetric"):
            raise ValueError(f"Downsample pad_mode must be 'asymmetric' or 'symmetric', got {pad_mode!r}.")
        self.pad_mode = pad_mode
        out_channels = channels if out_channels is None else out_channels
        self.conv = nn.Conv2d(
            channels, out_channels, kernel_size=3, stride=2, padding=int(pad_mode == "symmetric")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×H×W -> B×Cout×H/2×W/2
        if self.pad_mode == "asymmetric":
            x = F.pad(x, ASYMMETRIC_PAD)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then 3×3 conv (avoids the checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×H×W -> B×Cout×2H×2W
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
