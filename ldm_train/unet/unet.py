"""The latent-diffusion UNet (Rombach et al. 2022; Ronneberger et al. 2015; Ho et al. 2020's ε-network).

x_t, t, text context -> same-shape output; what the output means (ε, v or x₀) is the diffusion
package's business. Levels halve the resolution; ResBlocks carry the timestep embedding, spatial
transformers at `attention_levels` (and in the bottleneck) cross-attend to the context, and every
encoder activation is concatenated back in by the decoder (skip connections).

State-dict keys equal diffusers' `UNet2DConditionModel` (see layouts.py for configs and the
original CompVis/SD layout), so SD weights in diffusers format load with `load_state_dict`.
"""

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ldm_train.constraints import NonNegativeInt, OpenUnitInterval, PositiveInt, check_arguments
from ldm_train.nn import ResBlock, TimestepMLP, timestep_embedding
from ldm_train.unet.blocks import DownBlock, UNetMidBlock, UpBlock
from ldm_train.unet.transformer import SpatialTransformer

TIME_EMBED_MULT = 4  # timestep embedding width = 4 × model_channels (DDPM / LDM)
NORM_EPS = 1e-5  # GroupNorm eps of the UNet's ResBlocks and output norm (CompVis GroupNorm32, diffusers)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (LDM's `zero_module`) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class UNet(nn.Module):
    """Conditional UNet ε_θ(x_t, t, context) of latent diffusion / Stable Diffusion.

    Args:
        in_channels / out_channels: latent channels in and out.
        model_channels: width of the first level; level i has model_channels × channel_mult[i].
        channel_mult: one multiplier per resolution level (len(channel_mult) - 1 downsamplings).
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more per level).
        attention_levels: levels (0 = full resolution) with a spatial transformer after each ResBlock;
            the bottleneck always has one.
        num_heads / num_head_channels: attention heads per transformer, either a fixed count (SD 1.x: 8)
            or a fixed width per head (SD 2.x: 64); give exactly one.
        transformer_depth: BasicTransformerBlocks per spatial transformer.
        context_dim: width of the text encoder's context (its `output_dim`).
        use_linear_projection: Linear instead of 1×1-conv proj_in/proj_out (SD 2.x).
        resblock_scale_shift: timestep conditioning as FiLM scale/shift instead of an added bias.
        norm_groups: GroupNorm groups everywhere (every level width must be divisible by it).
        dropout: dropout inside the ResBlocks.
        gradient_checkpointing: recompute block activations in backward (less memory, ~30% more time).
    """

    def __init__(
        self,
        in_channels: PositiveInt = 4,
        out_channels: PositiveInt = 4,
        model_channels: PositiveInt = 320,
        channel_mult: Sequence[PositiveInt] = (1, 2, 4, 4),
        num_res_blocks: PositiveInt = 2,
        attention_levels: Sequence[NonNegativeInt] = (0, 1, 2),
        num_heads: PositiveInt | None = 8,
        num_head_channels: PositiveInt | None = None,
        transformer_depth: PositiveInt = 1,
        context_dim: PositiveInt = 768,
        use_linear_projection: bool = False,
        resblock_scale_shift: bool = False,
        norm_groups: PositiveInt = 32,
        dropout: OpenUnitInterval = 0.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        check_arguments(UNet.__init__, locals())
        channel_mult, attention_levels = tuple(channel_mult), tuple(sorted(set(attention_levels)))
        widths = [model_channels * m for m in channel_mult]
        self._check_args(widths, attention_levels, num_heads, num_head_channels, norm_groups)
        # The architecture, JSON-serialisable: UNet(**unet.config) rebuilds it; layouts.py translates it.
        self.config = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "model_channels": model_channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attention_levels": list(attention_levels),
            "num_heads": num_heads,
            "num_head_channels": num_head_channels,
            "transformer_depth": transformer_depth,
            "context_dim": context_dim,
            "use_linear_projection": use_linear_projection,
            "resblock_scale_shift": resblock_scale_shift,
            "norm_groups": norm_groups,
            "dropout": dropout,
        }
        self.model_channels, self.context_dim = model_channels, context_dim
        self.num_levels = len(widths)
        self.num_heads, self.num_head_channels = num_heads, num_head_channels

        temb_channels = model_channels * TIME_EMBED_MULT
        make_resblock = partial(
            ResBlock,
            temb_channels=temb_channels,
            dropout=dropout,
            groups=norm_groups,
            eps=NORM_EPS,
            scale_shift=resblock_scale_shift,
        )
        make_transformer = partial(
            self._transformer,
            depth=transformer_depth,
            context_dim=context_dim,
            use_linear_projection=use_linear_projection,
            groups=norm_groups,
        )
        ckpt = gradient_checkpointing

        self.time_embedding = TimestepMLP(model_channels, temb_channels)
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)

        self.down_blocks = nn.ModuleList()
        skip_channels = [widths[0]]  # conv_in's output is the first skip
        for level, width in enumerate(widths):
            last = level == self.num_levels - 1
            attend = make_transformer if level in attention_levels else None
            prev = widths[max(level - 1, 0)]
            self.down_blocks.append(
                DownBlock(
                    prev,
                    width,
                    num_res_blocks,
                    make_resblock,
                    attend,
                    downsample=not last,
                    gradient_checkpointing=ckpt,
                )
            )
            skip_channels += [width] * (num_res_blocks + (0 if last else 1))

        self.mid_block = UNetMidBlock(widths[-1], make_resblock, make_transformer, gradient_checkpointing=ckpt)

        self.up_blocks = nn.ModuleList()
        prev = widths[-1]
        for level in reversed(range(self.num_levels)):
            attend = make_transformer if level in attention_levels else None
            skips = [skip_channels.pop() for _ in range(num_res_blocks + 1)]
            self.up_blocks.append(
                UpBlock(
                    prev,
                    widths[level],
                    skips,
                    make_resblock,
                    attend,
                    upsample=level > 0,
                    gradient_checkpointing=ckpt,
                )
            )
            prev = widths[level]

        self.conv_norm_out = nn.GroupNorm(norm_groups, widths[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)
        self.initialize_weights()

    @staticmethod
    def _check_args(widths, attention_levels, num_heads, num_head_channels, norm_groups) -> None:
        if not widths or min(widths) <= 0:
            raise ValueError(f"channel_mult and model_channels must be positive, got level widths {widths}.")
        if any(level not in range(len(widths)) for level in attention_levels):
            raise ValueError(
                f"attention_levels {attention_levels} must be level indices in 0..{len(widths) - 1}."
            )
        if (num_heads is None) == (num_head_channels is None):
            raise ValueError("Give exactly one of num_heads (SD 1.x: 8) and num_head_channels (SD 2.x: 64).")
        divisor = num_heads or num_head_channels
        for width in widths:
            if width % norm_groups or width % divisor:
                raise ValueError(
                    f"Level width {width} must be divisible by norm_groups={norm_groups} and by "
                    f"{'num_heads' if num_heads else 'num_head_channels'}={divisor}; change model_channels."
                )

    def _transformer(self, channels: int, **kwargs) -> SpatialTransformer:
        heads = self.num_heads or channels // self.num_head_channels
        return SpatialTransformer(channels, heads, channels // heads, **kwargs)

    def initialize_weights(self) -> None:
        """LDM init: PyTorch defaults, with the last layer of every residual branch zeroed (`zero_module`).

        Each ResBlock and transformer then starts as the identity and the output starts at zero, so the
        untrained network is a stable residual stack (Goyal et al. 2017's zero-γ trick; LDM openaimodel.py).
        """
        for module in self.modules():
            if isinstance(module, ResBlock):
                zero_module(module.conv2)
            elif isinstance(module, SpatialTransformer):
                zero_module(module.proj_out)
        zero_module(self.conv_out)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> None:
        factor = 2 ** (self.num_levels - 1)
        if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"UNet input must be B×C×H×W with H and W divisible by {factor} (its {self.num_levels - 1} "
                f"downsamplings), got {tuple(x.shape)}; resize or pad the images/latents."
            )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(
                f"Timesteps must be a scalar or one per sample ({x.shape[0]}), got {tuple(t.shape)}."
            )
        if context is None or context.ndim != 3 or context.shape[0] != x.shape[0]:
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"UNet needs a text context B×L×{self.context_dim} for its cross-attention, got {got}; "
                "pass the text encoder's output (the empty prompt's for unconditional samples)."
            )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor
    ) -> torch.Tensor:  # x B×Cin×H×W, t B (int or float; or a scalar), context B×L×D -> B×Cout×H×W
        t = torch.as_tensor(t, device=x.device)
        self._check_inputs(x, t, context)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        temb = self.time_embedding(timestep_embedding(t, self.model_channels).to(x.dtype))  # B×4C

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context)
            skips += block_skips
        h = self.mid_block(h, temb, context)
        for block in self.up_blocks:
            h = block(h, skips, temb, context)  # pops its skips
        return self.conv_out(F.silu(self.conv_norm_out(h)))
