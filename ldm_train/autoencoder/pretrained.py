"""Build or fill our AutoencoderKL from pretrained weights on disk: a diffusers folder, or a .safetensors / .ckpt
file in the SD (CompVis), diffusers or ldm_train layout (key and config translation in `layouts.py`; the same
split as `unet/pretrained.py` and `unet/layouts.py`).

Loads are strict: a missing, unexpected or mis-shaped tensor raises with the key names, never a partial load.
"""

import json
import logging
import re
from pathlib import Path

from safetensors.torch import load_file

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.latent_norm import LatentNorm
from ldm_train.autoencoder.layouts import (
    LATENT_NORM_PREFIX,
    SD_VAE_PREFIX,
    StateDict,
    from_diffusers_state_dict,
    from_legacy_state_dict,
    from_sd_state_dict,
    kwargs_from_diffusers_config,
)
from ldm_train.files import read_state_dict

log = logging.getLogger(__name__)

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _autoencoder_subset(state: StateDict, prefix: str, source: Path) -> StateDict:
    """The VAE tensors under `prefix` (auto: SD/LDM's `first_stage_model.` when present), minus loss modules."""
    if not prefix and any(k.startswith(SD_VAE_PREFIX) for k in state):
        prefix = SD_VAE_PREFIX
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(
                f"{source} has no tensors under the prefix {prefix!r}; check the prefix argument."
            )
    loss_keys = [k for k in state if k.startswith("loss.")]
    if loss_keys:
        log.info(
            "%s: ignoring %d training-loss tensors (loss.*: LPIPS / discriminator)", source, len(loss_keys)
        )
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def _from_any_layout(state: StateDict, source: Path) -> StateDict:
    keys = list(state)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return from_diffusers_state_dict(state)
    if any(re.match(r"encoder\.down\.\d+\.block\.", k) for k in keys):
        return from_sd_state_dict(state)
    if any(re.match(r"encoder\.down\.\d+\.blocks\.", k) for k in keys):  # ldm_train's names before diffusers'
        return from_legacy_state_dict(state)
    raise ValueError(
        f"{source} is not an AutoencoderKL checkpoint (diffusers, SD or ldm_train layout); first keys: {keys[:5]}."
    )


def _head(keys: list[str], n: int = 10) -> str:
    if not keys:
        return "none"
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_strict(model: AutoencoderKL, state: StateDict, source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not fit this AutoencoderKL.\n  missing: {_head(missing)}\n  unexpected: {_head(unexpected)}"
            f"\n  shape (checkpoint≠model): {_head(wrong)}\nMake the autoencoder config (ch, ch_mult, num_res_blocks, "
            "z_channels, embed_dim, attn_resolutions, mid_attention, use_quant_conv) match the checkpoint."
        )
    model.load_state_dict(state)


def load_autoencoder_init(model: AutoencoderKL, path: str | Path, prefix: str = "") -> AutoencoderKL:
    """Fill `model` from a diffusers folder (config.json + safetensors), or a .safetensors / .ckpt in the SD,
    diffusers or ldm_train layout. Strict: a missing, unexpected or mis-shaped tensor raises, naming it.
    `prefix` selects the autoencoder inside a larger state_dict (e.g. a LightningModule's attribute name + ".").

    The latent scale/shift comes from the checkpoint (ldm_train layout), the diffusers config, or — for SD
    files, which carry none — stays as configured on `model`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"autoencoder init {path} does not exist; point it at a diffusers folder, .safetensors or .ckpt."
        )
    latent_norm = None
    if path.is_dir():
        config_file, weights_file = path / "config.json", path / DIFFUSERS_WEIGHTS
        if not (config_file.is_file() and weights_file.is_file()):
            raise FileNotFoundError(
                f"{path} is not a diffusers AutoencoderKL folder: it needs config.json and {DIFFUSERS_WEIGHTS}."
            )
        kwargs = kwargs_from_diffusers_config(json.loads(config_file.read_text()))
        state = from_diffusers_state_dict(load_file(weights_file))
        latent_norm = {"scale": kwargs["scaling_factor"], "shift": kwargs["shift_factor"]}
    else:
        state = _from_any_layout(_autoencoder_subset(read_state_dict(path), prefix, path), path)

    if not any(k.startswith(LATENT_NORM_PREFIX) for k in state):
        norm = model.latent_norm
        if latent_norm is None:
            log.info("%s carries no latent scale/shift; keeping the configured %s", path, norm.extra_repr())
        else:
            norm = LatentNorm(norm.channels, **latent_norm)
        state.update({LATENT_NORM_PREFIX + k: v for k, v in norm.state_dict().items()})
    _load_strict(model, state, path)
    return model


def autoencoder_from_diffusers(path: str | Path) -> AutoencoderKL:
    """Build our AutoencoderKL from a diffusers folder's config.json and load its weights."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found; pass a diffusers AutoencoderKL folder (save_pretrained output)."
        )
    model = AutoencoderKL(**kwargs_from_diffusers_config(json.loads(config_file.read_text())))
    return load_autoencoder_init(model, path)
