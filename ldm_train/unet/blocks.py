"""One resolution level of the UNet: encoder (down), bottleneck (mid) and decoder (up) blocks.

The blocks hold ResBlocks in `resnets`, spatial transformers in `attentions` and the resampling conv in
`downsamplers.0` / `upsamplers.0`: the names of diffusers' CrossAttnDownBlock2D etc., so a
`UNet2DConditionModel` state dict loads into ours unchanged. The layers are built by the UNet's
factories, which fix the widths shared by every level (timestep embedding, groups, heads).
"""

from collections.abc import Callable

import torch
from torch import nn

from ldm_train.nn import Downsample, ResBlock, Upsample
from ldm_train.nn.checkpointing import checkpointed
from ldm_train.unet.transformer import SpatialTransformer

MakeResBlock = Callable[[int, int], ResBlock]  # (in_channels, out_channels) -> ResBlock
MakeTransformer = Callable[[int], SpatialTransformer]  # channels -> SpatialTransformer


class DownBlock(nn.Module):
    """`num_layers` × (ResBlock [→ transformer]) then an optional stride-2 downsample; every output is a skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        make_resblock: MakeResBlock,
        make_transformer: MakeTransformer | None,
        downsample: bool,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            make_resblock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self.attentions = None
        if make_transformer is not None:
            self.attentions = nn.ModuleList(make_transformer(out_channels) for _ in range(num_layers))
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None
        self.gradient_checkpointing = gradient_checkpointing

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # B×Cin×H×W -> B×Cout×H'×W', skips (one per layer)
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = checkpointed(resnet, x, temb, enabled=self.gradient_checkpointing)
            if self.attentions is not None:
                x = checkpointed(self.attentions[i], x, context, enabled=self.gradient_checkpointing)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlock(nn.Module):
    """The bottleneck at the lowest resolution: ResBlock → transformer → ResBlock."""

    def __init__(
        self,
        channels: int,
        make_resblock: MakeResBlock,
        make_transformer: MakeTransformer,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([make_resblock(channels, channels), make_resblock(channels, channels)])
        self.attentions = nn.ModuleList([make_transformer(channels)])
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # B×C×h×w
        x = checkpointed(self.resnets[0], x, temb, enabled=self.gradient_checkpointing)
        x = checkpointed(self.attentions[0], x, context, enabled=self.gradient_checkpointing)
        return checkpointed(self.resnets[1], x, temb, enabled=self.gradient_checkpointing)


class UpBlock(nn.Module):
    """(ResBlock on [x, skip] [→ transformer]) per skip, then an optional nearest ×2 upsample + conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        skip_channels: list[int],
        make_resblock: MakeResBlock,
        make_transformer: MakeTransformer | None,
        upsample: bool,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        # Layer i consumes skip_channels[i] (the skips in the order this block pops them).
        widths = [in_channels] + [out_channels] * (len(skip_channels) - 1)
        self.resnets = nn.ModuleList(
            make_resblock(width + skip, out_channels) for width, skip in zip(widths, skip_channels)
        )
        self.attentions = None
        if make_transformer is not None:
            self.attentions = nn.ModuleList(make_transformer(out_channels) for _ in skip_channels)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None
        self.gradient_checkpointing = gradient_checkpointing

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:  # B×Cin×h×w, pops len(resnets) skips from the end of `skips` -> B×Cout×H×W
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)
            x = checkpointed(resnet, x, temb, enabled=self.gradient_checkpointing)
            if self.attentions is not None:
                x = checkpointed(self.attentions[i], x, context, enabled=self.gradient_checkpointing)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
