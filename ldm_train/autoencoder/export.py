"""The phase-1 → phase-2 hand-over: an exported autoencoder is `autoencoder.safetensors` (weights,
latent scale/shift buffers included) plus `autoencoder.json` (constructor arguments and the latent
scale/shift, each once), loadable without Lightning. Phase 2 finds the export of the newest finished
phase-1 run of its experiment group with `first_stage.ckpt=latest` (where runs live: ldm_train/runs.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

from safetensors.torch import load_file

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.pretrained import autoencoder_from_diffusers, load_autoencoder_init
from ldm_train.constraints import PathExists
from ldm_train.files import atomic_write, save_safetensors_atomic
from ldm_train.runs import (
    EXPORT_CONFIG,
    EXPORT_DIR,
    EXPORT_WEIGHTS,
    LATEST,
    export_weights_in,
    is_export,
    latest_finished_export,
)

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
# The LatentNorm's initial values among the constructor arguments: the export's `latent_scale` /
# `latent_shift` (the trained buffers) are the one record of them.
LATENT_NORM_ARGUMENTS = ("scaling_factor", "shift_factor")


def export_autoencoder(autoencoder: AutoencoderKL, run_dir: str | Path) -> Path:
    """Write `<run_dir>/export/{autoencoder.safetensors, autoencoder.json}`; returns the weights path."""
    out = Path(run_dir) / EXPORT_DIR
    meta = {
        "format_version": FORMAT_VERSION,
        "class": "AutoencoderKL",
        "config": {k: v for k, v in autoencoder.config.items() if k not in LATENT_NORM_ARGUMENTS},
        "latent_scale": autoencoder.latent_norm.scale.tolist(),
        "latent_shift": autoencoder.latent_norm.shift.tolist(),
    }
    save_safetensors_atomic(autoencoder.state_dict(), out / EXPORT_WEIGHTS)
    atomic_write(out / EXPORT_CONFIG, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return out / EXPORT_WEIGHTS


def load_exported_autoencoder(path: str | Path) -> AutoencoderKL:
    """Load `autoencoder.safetensors` + `autoencoder.json` (strict; the latent scale/shift come with the
    weights). Older exports, whose `config` also holds `scaling_factor`/`shift_factor`, load the same way."""
    path = Path(path)
    meta = json.loads((path.parent / EXPORT_CONFIG).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path.parent / EXPORT_CONFIG}: unsupported export format {meta.get('format_version')}; re-export it.")
    model = AutoencoderKL(**meta["config"])
    model.load_state_dict(load_file(path), strict=True)
    return model


FirstStageSource = Annotated[str, PathExists(sentinels=(LATEST,))]


def load_first_stage(
    ckpt: FirstStageSource = LATEST,
    search_dirs: list[str] | None = None,
    config: dict | None = None,
    group: str | None = None,
) -> AutoencoderKL:
    """The frozen VAE of phase 2 (eval, no grad), from:
    - `latest`: the export of the newest finished phase-1 run of experiment `group` under `search_dirs`;
    - a phase-1 run directory or its `export/` folder, or an `autoencoder.safetensors` export;
    - a diffusers `AutoencoderKL` folder (config.json + weights);
    - an original-layout SD VAE `.safetensors`/`.ckpt` (then `config` gives the AutoencoderKL arguments).
    """
    if ckpt == LATEST:
        path = latest_finished_export(search_dirs or [], group)
    else:
        if not Path(ckpt).exists():
            raise FileNotFoundError(f"first_stage.ckpt={ckpt}: no such file or folder.")
        path = export_weights_in(Path(ckpt))
    if is_export(path):
        model = load_exported_autoencoder(path)
    elif path.is_dir() and (path / "config.json").exists():
        model = autoencoder_from_diffusers(path)
    elif path.is_file() and config is not None:
        model = load_autoencoder_init(AutoencoderKL(**config), path)
    else:
        raise ValueError(
            f"first_stage.ckpt={path}: not a phase-1 export, a diffusers VAE folder, or (with first_stage.config) "
            "an SD VAE checkpoint. Point it at a run directory of `stage=autoencoder`."
        )
    if model.latent_norm.is_identity:
        log.warning("The first stage at %s has no latent scale set (scale 1, shift 0).", path)
    scale = model.latent_norm.scale.tolist()
    if ckpt == LATEST:
        log.info("First stage: first_stage.ckpt=latest: %s (the newest finished phase-1 run of group %r; latent "
                 "scale %s)", path, group, scale)
    else:
        log.info("First stage: %s (latent scale %s)", path, scale)
    model.source = str(path)  # copied into the phase-2 run and recorded in its checkpoints (ldm_train/runs.py)
    return model.eval().requires_grad_(False)
