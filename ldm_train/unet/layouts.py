"""Convert UNet configs and weights between ours, diffusers' `UNet2DConditionModel` and the original SD layout.

Our parameter names ARE diffusers' (down_blocks.0.resnets.0.norm1.weight, ...), so diffusers <-> ours is a
strict identity on weights plus a config translation. The original CompVis / Stable Diffusion checkpoints
(`model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`) number their blocks
flatly; the table below follows diffusers' `convert_original_stable_diffusion_to_diffusers.py`.
Loading from disk is `pretrained.py` (the same split as `autoencoder/layouts.py` and `autoencoder/pretrained.py`).
"""

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

SD_PREFIX = "model.diffusion_model."
CROSS_ATTN_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_ATTN_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID_BLOCK = "UNetMidBlock2DCrossAttn"
# diffusers options our UNet implements only at these values (anything else is a different architecture).
FIXED_DIFFUSERS_OPTIONS: dict[str, Any] = {
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_type": MID_BLOCK,
    "only_cross_attention": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_eps": 1e-5,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
}
# Config entries that do not change the weights or the float32 function.
IGNORED_DIFFUSERS_OPTIONS = {
    "sample_size",
    "upcast_attention",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "addition_embed_type_num_heads",
}
# ResBlock parameter names: ours/diffusers -> CompVis (in_layers = [norm, SiLU, conv], out_layers = [norm,
# SiLU, dropout, conv], emb_layers = [SiLU, linear]).
RESBLOCK_TO_SD = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


# diffusers options that from_diffusers_config translates into our kwargs.
TRANSLATED_DIFFUSERS_OPTIONS = {
    "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
    "attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "cross_attention_dim",
    "use_linear_projection", "resnet_time_scale_shift", "norm_num_groups", "dropout",
}  # fmt: skip


def _same_for_all(value: Any, count: int, name: str) -> Any:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(set(values)) != 1:
        raise ValueError(
            f"diffusers {name}={value} varies per block; our UNet uses one value for all levels."
        )
    return values[0]


def from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our `UNet(**kwargs)` for a diffusers `UNet2DConditionModel` config (e.g. `unet.config`, config.json)."""
    for key, expected in FIXED_DIFFUSERS_OPTIONS.items():
        if key in config and config[key] != expected:
            raise ValueError(
                f"diffusers UNet option {key}={config[key]!r} is not supported (only {expected!r})."
            )
    known = {*FIXED_DIFFUSERS_OPTIONS, *IGNORED_DIFFUSERS_OPTIONS}
    unknown = [
        k
        for k in config
        if not k.startswith("_") and k not in known and k not in TRANSLATED_DIFFUSERS_OPTIONS
    ]
    if unknown:
        log.warning("Ignoring diffusers UNet config keys %s", unknown)

    widths = list(config["block_out_channels"])
    if any(w % widths[0] for w in widths):
        raise ValueError(
            f"block_out_channels {widths} must be multiples of the first entry (our channel_mult)."
        )
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    if set(down) - {CROSS_ATTN_DOWN, PLAIN_DOWN} or set(up) - {CROSS_ATTN_UP, PLAIN_UP}:
        raise ValueError(f"Unsupported diffusers block types {down} / {up}.")
    attention_levels = [i for i, kind in enumerate(down) if kind == CROSS_ATTN_DOWN]
    if [i for i, kind in enumerate(reversed(up)) if kind == CROSS_ATTN_UP] != attention_levels:
        raise ValueError(
            f"down_block_types {down} and up_block_types {up} put attention at different levels."
        )

    n = len(widths)
    # diffusers' historical naming: `attention_head_dim` holds the number of heads unless num_attention_heads is set.
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * n
    head_widths = {w // h for w, h in zip(widths, heads)}
    if len(set(heads)) == 1:
        num_heads, num_head_channels = heads[0], None
    elif len(head_widths) == 1:
        num_heads, num_head_channels = None, head_widths.pop()
    else:
        raise ValueError(f"Heads {heads} for widths {widths}: neither the count nor the width is constant.")
    return {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "model_channels": widths[0],
        "channel_mult": [w // widths[0] for w in widths],
        "num_res_blocks": _same_for_all(config["layers_per_block"], n, "layers_per_block"),
        "attention_levels": attention_levels,
        "num_heads": num_heads,
        "num_head_channels": num_head_channels,
        "transformer_depth": _same_for_all(
            config.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"
        ),
        "context_dim": _same_for_all(config["cross_attention_dim"], n, "cross_attention_dim"),
        "use_linear_projection": config.get("use_linear_projection", False),
        "resblock_scale_shift": config.get("resnet_time_scale_shift", "default") == "scale_shift",
        "norm_groups": config.get("norm_num_groups", 32),
        "dropout": config.get("dropout", 0.0),
    }


def to_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `UNet2DConditionModel(**result)` equal to `UNet(**config)` (e.g. `unet.config`); same state-dict keys."""
    widths = [config["model_channels"] * m for m in config["channel_mult"]]
    levels, attention_levels = range(len(widths)), config["attention_levels"]
    heads = [config["num_heads"] or w // config["num_head_channels"] for w in widths]
    return {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "block_out_channels": widths,
        "down_block_types": [CROSS_ATTN_DOWN if i in attention_levels else PLAIN_DOWN for i in levels],
        "up_block_types": [CROSS_ATTN_UP if i in attention_levels else PLAIN_UP for i in reversed(levels)],
        "layers_per_block": config["num_res_blocks"],
        "attention_head_dim": heads,  # diffusers' name for the head count (see from_diffusers_config)
        "transformer_layers_per_block": config["transformer_depth"],
        "cross_attention_dim": config["context_dim"],
        "use_linear_projection": config["use_linear_projection"],
        "resnet_time_scale_shift": "scale_shift" if config["resblock_scale_shift"] else "default",
        "norm_num_groups": config["norm_groups"],
        "dropout": config["dropout"],
    }


def _module_pairs(config: Mapping[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(our module prefix, SD module prefix, is_resblock) for every module with parameters of `UNet(**config)`."""
    num_levels, num_res_blocks = len(config["channel_mult"]), config["num_res_blocks"]
    attention_levels = config["attention_levels"]
    yield "time_embedding.linear_1", "time_embed.0", False
    yield "time_embedding.linear_2", "time_embed.2", False
    yield "conv_in", "input_blocks.0.0", False
    per_level = num_res_blocks + 1  # SD numbers the downsample as its own input block
    for level in range(num_levels):
        for j in range(num_res_blocks):
            index = 1 + level * per_level + j
            yield f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0", True
            if level in attention_levels:
                yield f"down_blocks.{level}.attentions.{j}", f"input_blocks.{index}.1", False
        if level < num_levels - 1:
            yield (
                f"down_blocks.{level}.downsamplers.0.conv",
                f"input_blocks.{1 + level * per_level + num_res_blocks}.0.op",
                False,
            )
    yield "mid_block.resnets.0", "middle_block.0", True
    yield "mid_block.attentions.0", "middle_block.1", False
    yield "mid_block.resnets.1", "middle_block.2", True
    for block in range(num_levels):
        level = num_levels - 1 - block
        for j in range(per_level):
            index = block * per_level + j
            yield f"up_blocks.{block}.resnets.{j}", f"output_blocks.{index}.0", True
            if level in attention_levels:
                yield f"up_blocks.{block}.attentions.{j}", f"output_blocks.{index}.1", False
        if level > 0:
            slot = 2 if level in attention_levels else 1  # after the ResBlock [and the transformer]
            yield (
                f"up_blocks.{block}.upsamplers.0.conv",
                f"output_blocks.{block * per_level + num_res_blocks}.{slot}.conv",
                False,
            )
    yield "conv_norm_out", "out.0", False
    yield "conv_out", "out.2", False


def _rename(
    state_dict: Mapping[str, torch.Tensor], prefixes: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, torch.Tensor]:
    out, unmatched = {}, []
    for key, tensor in state_dict.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # longest module prefix first
            match = prefixes.get(".".join(parts[:cut]))
            if match is not None:
                target, renames = match
                rest = ".".join(parts[cut:])
                head = next((old for old in renames if rest.startswith(old + ".")), None)
                if head is not None:  # a ResBlock layer: norm1.weight <-> in_layers.0.weight
                    rest = renames[head] + rest[len(head) :]
                out[f"{target}.{rest}"] = tensor
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ValueError(
            f"Unexpected UNet keys for this configuration (check the UNet kwargs): {unmatched[:10]}"
        )
    return out


def ours_to_sd(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = SD_PREFIX
) -> dict[str, torch.Tensor]:
    """Our (= diffusers') state dict of `UNet(**config)` in the original SD checkpoint layout (under `prefix`)."""
    table = {
        ours: (prefix + sd, RESBLOCK_TO_SD if is_res else {}) for ours, sd, is_res in _module_pairs(config)
    }
    return _rename(state_dict, table)


def sd_to_ours(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = SD_PREFIX
) -> dict[str, torch.Tensor]:
    """Our state dict of `UNet(**config)` from an original SD checkpoint (keys under `prefix`; the VAE, text
    encoder and EMA keys are skipped)."""
    unet = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not unet:
        raise ValueError(
            f"No keys start with {prefix!r}; is this a Stable Diffusion checkpoint? Pass its prefix."
        )
    to_ours = {v: k for k, v in RESBLOCK_TO_SD.items()}
    table = {sd: (ours, to_ours if is_res else {}) for ours, sd, is_res in _module_pairs(config)}
    return _rename(unet, table)
