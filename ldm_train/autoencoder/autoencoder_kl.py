"""KL-regularised autoencoder (LDM, Rombach et al. 2022, §3.1): image <-> latent, with the latent normaliser."""

from collections.abc import Sequence

import torch
from torch import nn

from ldm_train.autoencoder.decoder import Decoder
from ldm_train.autoencoder.distribution import DiagonalGaussian
from ldm_train.autoencoder.encoder import Encoder
from ldm_train.autoencoder.latent_norm import LatentNorm
from ldm_train.autoencoder.layouts import from_legacy_state_dict, has_legacy_names
from ldm_train.constraints import NonNegativeInt, OpenUnitInterval, PositiveInt, check_arguments


def _json_ready(value: float | Sequence[float]) -> float | list[float]:
    return float(value) if isinstance(value, (int, float)) else [float(v) for v in value]


class AutoencoderKL(nn.Module):
    """Encoder -> 1×1 `quant_conv` -> N(μ, σ²) over `embed_dim` channels; 1×1 `post_quant_conv` -> Decoder.

    `scaling_factor` / `shift_factor` initialise the `LatentNorm` (overwritten by a loaded checkpoint or by
    `latent_norm.set_from_statistics`). `use_quant_conv=False` drops both 1×1 convs (SD3/FLUX-style VAEs),
    which requires `embed_dim == z_channels`. `self.config` holds the constructor arguments (JSON-ready), so
    `AutoencoderKL(**model.config)` rebuilds the architecture of an exported model. Parameters carry diffusers'
    AutoencoderKL names; state dicts with the names of older ldm_train checkpoints load as well.
    """

    def __init__(
        self,
        in_channels: PositiveInt = 3,
        out_channels: PositiveInt | None = None,
        ch: PositiveInt = 128,
        ch_mult: Sequence[PositiveInt] = (1, 2, 4, 4),
        num_res_blocks: NonNegativeInt = 2,
        z_channels: PositiveInt = 4,
        embed_dim: PositiveInt = 4,
        attn_resolutions: Sequence[PositiveInt] = (),
        mid_attention: bool = True,
        resolution: PositiveInt = 256,
        dropout: OpenUnitInterval = 0.0,
        norm_groups: PositiveInt = 32,
        use_quant_conv: bool = True,
        scaling_factor: float | Sequence[float] = 1.0,
        shift_factor: float | Sequence[float] = 0.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        check_arguments(AutoencoderKL.__init__, locals())
        if not use_quant_conv and embed_dim != z_channels:
            raise ValueError(
                f"use_quant_conv=False needs embed_dim == z_channels (got {embed_dim} and {z_channels}); "
                "set them equal or enable the quant convs."
            )
        out_channels = in_channels if out_channels is None else out_channels
        shared = dict(
            ch=ch,
            ch_mult=[int(m) for m in ch_mult],
            num_res_blocks=num_res_blocks,
            z_channels=z_channels,
            attn_resolutions=[int(r) for r in attn_resolutions],
            mid_attention=mid_attention,
            resolution=resolution,
            dropout=dropout,
            norm_groups=norm_groups,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            embed_dim=embed_dim,
            use_quant_conv=use_quant_conv,
            scaling_factor=_json_ready(scaling_factor),
            shift_factor=_json_ready(shift_factor),
            **shared,
        )
        self.encoder = Encoder(in_channels=in_channels, double_z=True, **shared)
        self.decoder = Decoder(out_channels=out_channels, **shared)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1) if use_quant_conv else None
        self.latent_norm = LatentNorm(embed_dim, scale=scaling_factor, shift=shift_factor)
        self.embed_dim = embed_dim
        self.downsampling_factor = 2 ** (len(ch_mult) - 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Older checkpoints and exports (ldm_train's own names, layouts.LEGACY_RULES): renamed in place before this
        # module and its children read their keys, so strict loads (Lightning's resume included) still work.
        ours = [k for k in state_dict if k.startswith(prefix)]
        if has_legacy_names(k[len(prefix):] for k in ours):
            renamed = from_legacy_state_dict({k[len(prefix):]: state_dict.pop(k) for k in ours})
            state_dict.update({prefix + k: v for k, v in renamed.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the encoder and the decoder in place (see `Decoder.compile`); the rest (1×1 convs, the
        posterior, the latent norm) stays eager, and `forward` keeps returning a posterior object."""
        self.encoder.compile(*args, **kwargs)
        self.decoder.compile(*args, **kwargs)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:  # B×Cin×H×W -> posterior over B×embed×H/f×W/f
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # raw latent B×embed×h×w -> B×Cout×h·f×w·f
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:  # B×Cin×H×W -> (recon B×Cout×H×W, posterior)
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    def encode_latents(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:  # B×Cin×H×W -> normalised latents B×embed×H/f×W/f
        """Latents for the diffusion model: a posterior sample (as LDM trains) or its mean, then normalised."""
        posterior = self.encode(x)
        return self.latent_norm.normalize(posterior.sample(generator) if sample else posterior.mode())

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:  # normalised B×embed×h×w -> B×Cout×h·f×w·f
        return self.decode(self.latent_norm.denormalize(z))

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight: the adaptive GAN weight balances gradients at this layer (VQGAN, Esser et al. 2021, eq. 7)."""
        return self.decoder.conv_out.weight
