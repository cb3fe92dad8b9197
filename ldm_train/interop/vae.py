"""Our AutoencoderKL as diffusers' `AutoencoderKL` config (the inverse of `layouts.kwargs_from_diffusers_config`).

Stable Diffusion pipelines normalise latents with one number: they sample in `z·scaling_factor` and decode
`z/scaling_factor`. Our `LatentNorm` is more general, `(z − shift)·scale` per channel; only a uniform scale
with zero shift (LDM / SD's convention) has an SD-pipeline equivalent.
"""

from __future__ import annotations

from typing import Any

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.encoder import level_resolutions

DOWN_BLOCK = {False: "DownEncoderBlock2D", True: "AttnDownEncoderBlock2D"}  # has attention -> type
UP_BLOCK = {False: "UpDecoderBlock2D", True: "AttnUpDecoderBlock2D"}


def sd_scaling_factor(autoencoder: AutoencoderKL) -> float:
    """The single `scaling_factor` of a Stable Diffusion pipeline equal to this autoencoder's LatentNorm."""
    scale, shift = autoencoder.latent_norm.scale, autoencoder.latent_norm.shift
    if (shift != 0).any():
        raise ValueError(
            f"The latent norm has a shift {shift.tolist()}; Stable Diffusion pipelines only scale latents "
            "(z·scaling_factor), so this model cannot be exported for them. Train phase 2 with a scale-only "
            "latent norm (latent_norm.set_from_statistics(std) with mean 0)."
        )
    if (scale != scale[0]).any():
        raise ValueError(
            f"The latent norm scales each channel differently ({scale.tolist()}); Stable Diffusion pipelines "
            "use one scaling_factor for all channels, so this model cannot be exported for them. Train phase 2 "
            "with a scalar latent scale (latent_norm.set_from_statistics(<one std>))."
        )
    return float(scale[0])


def diffusers_vae_config(autoencoder: AutoencoderKL) -> dict[str, Any]:
    """`diffusers.AutoencoderKL(**result)` has our state-dict layout (`layouts.to_diffusers_state_dict`)
    and computes the same function; `scaling_factor` comes from the LatentNorm."""
    config = autoencoder.config
    if config["ch_mult"][0] != 1:
        raise ValueError(
            f"ch_mult {config['ch_mult']} does not start at 1: diffusers' AutoencoderKL runs its first block at "
            "the conv_in width. Only autoencoders with ch_mult[0] == 1 can be exported to diffusers."
        )
    if config["embed_dim"] != config["z_channels"]:
        raise ValueError(
            f"embed_dim {config['embed_dim']} != z_channels {config['z_channels']}: diffusers' AutoencoderKL "
            "has one latent_channels for both; only autoencoders with embed_dim == z_channels can be exported."
        )
    resolutions = level_resolutions(config["resolution"], len(config["ch_mult"]))
    attention = [res in config["attn_resolutions"] for res in resolutions]
    return {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "down_block_types": [DOWN_BLOCK[a] for a in attention],
        "up_block_types": [UP_BLOCK[a] for a in reversed(attention)],
        "block_out_channels": [config["ch"] * m for m in config["ch_mult"]],
        "layers_per_block": config["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": config["embed_dim"],
        "norm_num_groups": config["norm_groups"],
        "sample_size": config["resolution"],
        "scaling_factor": sd_scaling_factor(autoencoder),
        "use_quant_conv": config["use_quant_conv"],
        "use_post_quant_conv": config["use_quant_conv"],
        "mid_block_add_attention": config["mid_attention"],
    }
