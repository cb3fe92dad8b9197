"""State-dict and config translation between our AutoencoderKL and diffusers' / CompVis-SD's layouts.

Our parameters carry diffusers' AutoencoderKL names, so the diffusers layout differs only by `latent_norm.*`
(and the deprecated attention names of old diffusers uploads). The CompVis / SD layout is a rename.
`latent_norm.*` has no counterpart in either layout: for diffusers it lives in the config (`scaling_factor`,
`shift_factor`, `latents_mean/std`), SD keeps its scale in the LDM config.

Key renames are bidirectional templates: `{i}` / `{j}` stand for block indices and a template matches at a
dot boundary. Rules apply in list order in both directions and are written so that no rule's output is
another rule's input.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]

# (the names of ldm_train checkpoints and exports written before the VAE took diffusers' names, ours). Old
# checkpoints load through it (`from_legacy_state_dict`); the SD rules below are written against those names.
LEGACY_RULES = [
    ("mid.block_1.", "mid_block.resnets.0."),
    ("mid.block_2.", "mid_block.resnets.1."),
    ("mid.attention.", "mid_block.attentions.0."),
    ("down.{i}.blocks.", "down_blocks.{i}.resnets."),
    ("down.{i}.attentions.", "down_blocks.{i}.attentions."),
    ("down.{i}.downsample.", "down_blocks.{i}.downsamplers.0."),
    ("up.{i}.blocks.", "up_blocks.{i}.resnets."),
    ("up.{i}.attentions.", "up_blocks.{i}.attentions."),
    ("up.{i}.upsample.", "up_blocks.{i}.upsamplers.0."),
    ("attention.to_", "to_"),
    ("norm.", "group_norm."),
    ("norm_out.", "conv_norm_out."),
]
# Old diffusers checkpoints (e.g. the first SD VAE uploads) use these attention names; diffusers maps them on load.
DIFFUSERS_DEPRECATED_ATTENTION = [
    ("query.", "to_q."),
    ("key.", "to_k."),
    ("value.", "to_v."),
    ("proj_attn.", "to_out.0."),
]

# (legacy ours, CompVis / SD original), plus: decoder levels are indexed by resolution there (up.0 runs last) and
# attention projections are 1×1 convs.
SD_RULES = [
    ("blocks.", "block."),
    ("mid.attention.", "mid.attn_1."),
    ("attentions.", "attn."),
    ("attention.to_q.", "q."),
    ("attention.to_k.", "k."),
    ("attention.to_v.", "v."),
    ("attention.to_out.0.", "proj_out."),
    ("conv_shortcut.", "nin_shortcut."),
]
SD_ATTENTION_WEIGHT = re.compile(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$")
SD_DECODER_LEVEL = re.compile(r"^decoder\.up\.(\d+)\.")
LEGACY_KEY = re.compile(r"(^|\.)(encoder|decoder)\.(down|up|mid|norm_out)\.")  # e.g. encoder.down.0.blocks.0.*
LATENT_NORM_PREFIX = "latent_norm."
SD_VAE_PREFIX = "first_stage_model."  # where full SD / LDM checkpoints keep the autoencoder

DIFFUSERS_DEFAULT_SCALING_FACTOR = 0.18215  # diffusers' default when an old config.json omits scaling_factor
DOWN_TYPES = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}  # type -> has attention
UP_TYPES = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


def _compile(template: str) -> re.Pattern:
    """'down.{i}.blocks.' -> a regex matching it at a dot boundary, with named index groups."""
    parts = re.split(r"\{(\w)\}", template)  # literal, name, literal, name, ...
    body = "".join(re.escape(p) if k % 2 == 0 else rf"(?P<{p}>\d+)" for k, p in enumerate(parts))
    return re.compile(r"(?<![^.])" + body)


def _rename(state: Mapping[str, torch.Tensor], rules: list[tuple[str, str]], reverse: bool) -> StateDict:
    compiled = [(_compile(dst if reverse else src), dst if not reverse else src) for src, dst in rules]
    out = {}
    for key, value in state.items():
        for pattern, target in compiled:
            key = pattern.sub(lambda m, t=target: t.format(**m.groupdict()), key)
        out[key] = value
    return out


def _without_latent_norm(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v for k, v in state.items() if not k.startswith(LATENT_NORM_PREFIX)}


def from_legacy_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """A state_dict with the names of older ldm_train checkpoints -> ours (current names pass unchanged)."""
    return _rename(state, LEGACY_RULES, reverse=False)


def has_legacy_names(keys: Iterable[str]) -> bool:
    return any(LEGACY_KEY.search(k) for k in keys)


def legacy_parameter_positions(legacy_keys: Sequence[str], parameter_names: Sequence[str]) -> list[int]:
    """Where each parameter of an older checkpoint sits among ours: for the i-th parameter in that checkpoint's
    order (its state-dict key order, buffers left out), its index in `parameter_names` (our registration order).
    Optimizer state is matched by position, so a resumed optimizer's state is moved by this map."""
    index = {name: i for i, name in enumerate(parameter_names)}
    old = [k for k in from_legacy_state_dict(dict.fromkeys(legacy_keys)) if k in index]
    if sorted(old) != sorted(parameter_names):
        raise ValueError("the checkpoint's autoencoder parameters differ from this model's; check the autoencoder config")
    return [index[k] for k in old]


def to_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Our state_dict -> diffusers AutoencoderKL's: the same names; latent_norm goes to the config."""
    return _without_latent_norm(state)


def from_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """diffusers AutoencoderKL state_dict (current or deprecated attention names) -> ours, without latent_norm."""
    return _rename(state, DIFFUSERS_DEPRECATED_ATTENTION, reverse=False)


def _flip_decoder_levels(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Decoder stage k (run order) is CompVis level L-1-k; the map is its own inverse."""
    levels = [int(m.group(1)) for k in state if (m := SD_DECODER_LEVEL.match(k))]
    if not levels:
        return dict(state)
    last = max(levels)
    return {
        SD_DECODER_LEVEL.sub(lambda m: f"decoder.up.{last - int(m.group(1))}.", k): v
        for k, v in state.items()
    }


def to_sd_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Our state_dict -> the CompVis / Stable Diffusion VAE layout (attention projections as 1×1 convs)."""
    legacy = _rename(_without_latent_norm(state), LEGACY_RULES, reverse=True)
    renamed = _flip_decoder_levels(_rename(legacy, SD_RULES, reverse=False))
    return {k: v[..., None, None] if SD_ATTENTION_WEIGHT.search(k) else v for k, v in renamed.items()}


def from_sd_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """CompVis / Stable Diffusion VAE layout -> our state_dict, without latent_norm."""
    flat = {k: v.flatten(1) if SD_ATTENTION_WEIGHT.search(k) else v for k, v in state.items()}
    return from_legacy_state_dict(_rename(_flip_decoder_levels(flat), SD_RULES, reverse=True))


def _attention_levels(types: list[str], known: dict[str, bool], what: str) -> list[bool]:
    unknown = [t for t in types if t not in known]
    if unknown:
        raise ValueError(
            f"diffusers config: {what} {unknown} are not supported; expected any of {sorted(known)}."
        )
    return [known[t] for t in types]


def kwargs_from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers `AutoencoderKL` config dict -> keyword arguments for our `AutoencoderKL`."""
    widths = list(config["block_out_channels"])
    ch, num_levels = widths[0], len(widths)
    if any(w % ch for w in widths):
        raise ValueError(
            f"diffusers config: block_out_channels {widths} are not multiples of the first; cannot express as ch·ch_mult."
        )
    if config.get("act_fn", "silu") != "silu":
        raise ValueError(f"diffusers config: act_fn={config['act_fn']!r} is not supported (only 'silu').")
    if config.get("use_quant_conv", True) != config.get("use_post_quant_conv", True):
        raise ValueError(
            "diffusers config: use_quant_conv and use_post_quant_conv differ; only both-or-neither is supported."
        )
    down = _attention_levels(list(config["down_block_types"]), DOWN_TYPES, "down_block_types")
    up = _attention_levels(list(config["up_block_types"]), UP_TYPES, "up_block_types")
    if not len(down) == len(up) == num_levels or down != up[::-1]:
        raise ValueError(
            f"diffusers config: down_block_types {config['down_block_types']} and up_block_types "
            f"{config['up_block_types']} must mirror each other with one entry per block_out_channels entry."
        )
    size = config.get("sample_size", 32)
    resolution = int(size[0] if isinstance(size, (list, tuple)) else size)

    latent_channels = int(config.get("latent_channels", 4))
    scale = config.get("scaling_factor") or DIFFUSERS_DEFAULT_SCALING_FACTOR
    shift: float | list[float] = config.get("shift_factor") or 0.0
    if config.get("latents_mean") is not None or config.get("latents_std") is not None:
        if config.get("latents_mean") is None or config.get("latents_std") is None:
            raise ValueError("diffusers config: latents_mean and latents_std must be given together.")
        # Pipelines compute (z - mean) * scaling_factor / std.
        scale = [scale / s for s in config["latents_std"]]
        shift = list(config["latents_mean"])

    return dict(
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
        ch=ch,
        ch_mult=[w // ch for w in widths],
        num_res_blocks=int(config.get("layers_per_block", 1)),
        z_channels=latent_channels,
        embed_dim=latent_channels,
        attn_resolutions=[resolution // 2**level for level in range(num_levels) if down[level]],
        mid_attention=bool(config.get("mid_block_add_attention", True)),
        resolution=resolution,
        norm_groups=int(config.get("norm_num_groups", 32)),
        use_quant_conv=bool(config.get("use_quant_conv", True)),
        scaling_factor=scale,
        shift_factor=shift,
    )
