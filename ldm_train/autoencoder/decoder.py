"""The LDM autoencoder's decoder: latent -> image, the encoder's mirror.

conv3×3 in, ResBlock–attention–ResBlock middle, then per level (lowest resolution first) `num_res_blocks + 1`
ResBlocks (with self-attention at the levels in `attn_resolutions`) and nearest ×2 + conv upsampling.
`self.up_blocks[0]` is the lowest-resolution stage, i.e. stages are stored in the order they run.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm_train.autoencoder.encoder import (
    NORM_EPS,
    AutoencoderMidBlock,
    ResolutionStage,
    check_attn_resolutions,
    level_resolutions,
)
from ldm_train.nn import Upsample
from ldm_train.nn.checkpointing import checkpointed


class DecoderStage(ResolutionStage):
    """A resolution level of the decoder, doubling the resolution at its end unless it is the last one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        attention: bool,
        dropout: float,
        groups: int,
        upsample: bool,
    ):
        super().__init__(in_channels, out_channels, num_blocks, attention, dropout, groups)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])  # `upsamplers.0`, as in diffusers

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×Cin×h×w -> B×Cout×2h×2w (h×w at the last level)
        x = super().forward(x)
        for upsample in self.upsamplers:
            x = upsample(x)
        return x


class Decoder(nn.Module):
    """Latent B×z_channels×h×w -> image B×out_channels×(h·f)×(w·f), f = 2^(len(ch_mult)-1)."""

    def __init__(
        self,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        z_channels: int = 4,
        attn_resolutions: Sequence[int] = (),
        mid_attention: bool = True,
        resolution: int = 256,
        dropout: float = 0.0,
        norm_groups: int = 32,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        num_levels = len(ch_mult)
        check_attn_resolutions(attn_resolutions, resolution, num_levels)
        self.gradient_checkpointing = gradient_checkpointing
        # Walk the levels from the bottleneck up: widths and resolutions in run order.
        widths = [ch * m for m in reversed(ch_mult)]
        resolutions = list(reversed(level_resolutions(resolution, num_levels)))

        self.conv_in = nn.Conv2d(z_channels, widths[0], kernel_size=3, padding=1)
        self.mid_block = AutoencoderMidBlock(widths[0], mid_attention, dropout, norm_groups)
        # One block more than the encoder per level, as in CompVis (the extra block replaced the UNet skip).
        self.up_blocks = nn.ModuleList(
            DecoderStage(
                c_in,
                c_out,
                num_res_blocks + 1,
                attention=res in attn_resolutions,
                dropout=dropout,
                groups=norm_groups,
                upsample=i < num_levels - 1,
            )
            for i, (c_in, c_out, res) in enumerate(zip([widths[0], *widths[:-1]], widths, resolutions))
        )
        self.conv_norm_out = nn.GroupNorm(norm_groups, widths[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)

    def compile(self, *args, **kwargs) -> None:
        """torch.compile in place, all but the output layer (norm, SiLU, `conv_out`), which stays eager: phase 1's
        adaptive GAN weight differentiates two losses with respect to `conv_out.weight` with retain_graph=True,
        which a compiled graph's backward refuses once it has donated its buffers. With the output layer eager,
        that differentiation stops before the compiled graph, whose backward then runs once, in the step's own
        backward. Arguments as `nn.Module.compile`."""
        for part in (self.conv_in, self.mid_block, *self.up_blocks):
            part.compile(*args, **kwargs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # B×z×h×w -> B×Cout×h·f×w·f
        h = self.conv_in(z)
        h = checkpointed(self.mid_block, h, enabled=self.gradient_checkpointing)
        for stage in self.up_blocks:
            h = checkpointed(stage, h, enabled=self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
