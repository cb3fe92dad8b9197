"""The LDM autoencoder's encoder: image -> moments of the diagonal Gaussian posterior.

Architecture of Esser et al. 2021 (VQGAN) / Rombach et al. 2022 (LDM, §3.1, appendix G): per resolution level
`num_res_blocks` pre-norm ResBlocks (each followed by self-attention at the levels listed in `attn_resolutions`)
and a stride-2 conv between levels; a ResBlock–attention–ResBlock bottleneck; GroupNorm, SiLU, conv3×3 out.
The middle and stage classes here are reused by the decoder.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm_train.nn import Downsample, ResBlock, SpatialSelfAttention
from ldm_train.nn.checkpointing import checkpointed

NORM_EPS = 1e-6  # GroupNorm epsilon of the CompVis / diffusers autoencoders


def level_resolutions(resolution: int, num_levels: int) -> list[int]:
    """Feature-map side length at each encoder level (level 0 = input resolution)."""
    return [resolution // 2**level for level in range(num_levels)]


def check_attn_resolutions(attn_resolutions: Sequence[int], resolution: int, num_levels: int) -> None:
    """Reject attention resolutions that match no level (CompVis silently ignores them)."""
    levels = level_resolutions(resolution, num_levels)
    unknown = sorted(set(attn_resolutions) - set(levels))
    if unknown:
        raise ValueError(
            f"attn_resolutions {unknown} match no level of this autoencoder; with resolution={resolution} "
            f"the levels are {levels}. Use values from that list (or [] for no attention outside the middle)."
        )


class AutoencoderMidBlock(nn.Module):
    """Bottleneck: ResBlock -> (optional) spatial self-attention -> ResBlock, at constant width
    (diffusers' UNetMidBlock2D: `resnets.0`, `attentions.0`, `resnets.1`)."""

    def __init__(self, channels: int, attention: bool, dropout: float, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock(channels, dropout=dropout, groups=groups, eps=NORM_EPS) for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [SpatialSelfAttention(channels, groups=groups, eps=NORM_EPS)] if attention else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×C×h×w -> B×C×h×w
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class ResolutionStage(nn.Module):
    """`num_blocks` ResBlocks (`resnets`) at one resolution, each followed by self-attention (`attentions`) when
    `attention` is set: diffusers' (Attn)DownEncoderBlock2D / (Attn)UpDecoderBlock2D names."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        attention: bool,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.resnets = nn.ModuleList(
            ResBlock(c_in, out_channels, dropout=dropout, groups=groups, eps=NORM_EPS) for c_in in widths[:-1]
        )
        n_attn = num_blocks if attention else 0
        self.attentions = nn.ModuleList(
            SpatialSelfAttention(out_channels, groups=groups, eps=NORM_EPS) for _ in range(n_attn)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×Cin×h×w -> B×Cout×h×w
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions:
                x = self.attentions[i](x)
        return x


class EncoderStage(ResolutionStage):
    """A resolution level of the encoder, halving the resolution at its end unless it is the last one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        attention: bool,
        dropout: float,
        groups: int,
        downsample: bool,
    ):
        super().__init__(in_channels, out_channels, num_blocks, attention, dropout, groups)
        # A list of one (or none), stored as `downsamplers.0` as in diffusers.
        self.downsamplers = nn.ModuleList([Downsample(out_channels, pad_mode="asymmetric")] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×Cin×h×w -> B×Cout×h/2×w/2 (h×w at the last level)
        x = super().forward(x)
        for downsample in self.downsamplers:
            x = downsample(x)
        return x


class Encoder(nn.Module):
    """Image B×in_channels×H×W -> B×(2·z_channels if double_z else z_channels)×H/f×W/f, f = 2^(len(ch_mult)-1)."""

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        z_channels: int = 4,
        double_z: bool = True,
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
        widths = [ch * m for m in ch_mult]

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        stages = []
        for level, (c_in, c_out, res) in enumerate(
            zip([ch, *widths[:-1]], widths, level_resolutions(resolution, num_levels))
        ):
            stages.append(
                EncoderStage(
                    c_in,
                    c_out,
                    num_res_blocks,
                    attention=res in attn_resolutions,
                    dropout=dropout,
                    groups=norm_groups,
                    downsample=level < num_levels - 1,
                )
            )
        self.down_blocks = nn.ModuleList(stages)
        self.mid_block = AutoencoderMidBlock(widths[-1], mid_attention, dropout, norm_groups)
        self.conv_norm_out = nn.GroupNorm(norm_groups, widths[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(
            widths[-1], 2 * z_channels if double_z else z_channels, kernel_size=3, padding=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×Cin×H×W -> B×(2)z×H/f×W/f
        h = self.conv_in(x)
        for stage in self.down_blocks:
            h = checkpointed(stage, h, enabled=self.gradient_checkpointing)
        h = checkpointed(self.mid_block, h, enabled=self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
