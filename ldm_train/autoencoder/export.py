"""The phase-1 → phase-2 hand-over: an exported autoencoder is `autoencoder.safetensors` (weights,
latent scale/shift buffers included) plus `autoencoder.json` (constructor arguments), loadable
without Lightning. Phase 2 finds the newest export with `first_stage.ckpt=latest`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

from safetensors.torch import load_file, save_file

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.convert import autoencoder_from_diffusers, load_autoencoder_init
from ldm_train.constraints import PathExists
from ldm_train.files import atomic_write

log = logging.getLogger(__name__)
EXPORT_DIR = "export"
WEIGHTS = "autoencoder.safetensors"
CONFIG = "autoencoder.json"
FORMAT_VERSION = 1


def export_autoencoder(autoencoder: AutoencoderKL, run_dir: str | Path) -> Path:
    """Write `<run_dir>/export/{autoencoder.safetensors, autoencoder.json}`; returns the weights path."""
    out = Path(run_dir) / EXPORT_DIR
    state = {k: v.detach().cpu().contiguous() for k, v in autoencoder.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "class": "AutoencoderKL",
        "config": autoencoder.config,
        "latent_scale": autoencoder.latent_norm.scale.tolist(),
        "latent_shift": autoencoder.latent_norm.shift.tolist(),
    }
    atomic_write(out / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write(out / CONFIG, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return out / WEIGHTS


def find_latest_export(search_dirs: list[str]) -> Path:
    """Newest `export/autoencoder.safetensors` (by modification time) below any of `search_dirs`."""
    found = [p for d in search_dirs for p in Path(d).glob(f"**/{EXPORT_DIR}/{WEIGHTS}") if (p.parent / CONFIG).exists()]
    if not found:
        raise FileNotFoundError(
            f"first_stage.ckpt=latest: no phase-1 export ({EXPORT_DIR}/{WEIGHTS}) under {', '.join(search_dirs)}. "
            "Train one with `python train.py stage=autoencoder`, or set first_stage.ckpt=<run dir, export dir, "
            "diffusers VAE folder, or SD .safetensors/.ckpt>."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def load_exported_autoencoder(path: str | Path) -> AutoencoderKL:
    """Load `autoencoder.safetensors` + `autoencoder.json` (strict)."""
    path = Path(path)
    meta = json.loads((path.parent / CONFIG).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path.parent / CONFIG}: unsupported export format {meta.get('format_version')}; re-export it.")
    model = AutoencoderKL(**meta["config"])
    model.load_state_dict(load_file(path), strict=True)
    return model


LATEST = "latest"
FirstStageSource = Annotated[str, PathExists(sentinels=(LATEST,))]


def load_first_stage(
    ckpt: FirstStageSource = LATEST, search_dirs: list[str] | None = None, config: dict | None = None
) -> AutoencoderKL:
    """The frozen VAE of phase 2 (eval, no grad), from:
    - `latest`: the newest phase-1 export under `search_dirs`;
    - a phase-1 run directory or its `export/` folder, or an `autoencoder.safetensors` export;
    - a diffusers `AutoencoderKL` folder (config.json + weights);
    - an original-layout SD VAE `.safetensors`/`.ckpt` (then `config` gives the AutoencoderKL arguments).
    """
    if ckpt == LATEST:
        path = find_latest_export(search_dirs or [])
    else:
        path = Path(ckpt)
        if not path.exists():
            raise FileNotFoundError(f"first_stage.ckpt={ckpt}: no such file or folder.")
        for candidate in (path / EXPORT_DIR / WEIGHTS, path / WEIGHTS):
            if path.is_dir() and candidate.exists():
                path = candidate
    if path.name == WEIGHTS and (path.parent / CONFIG).exists():
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
    log.info("First stage: %s (latent scale %s)", path, model.latent_norm.scale.tolist())
    model.source = str(path)  # recorded in phase-2 checkpoints, so samplers reload the same VAE
    return model.eval().requires_grad_(False)
