"""Exports appear whole or not at all: written under a temporary name next to the target, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ldm_train import files


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another output path or pass overwrite=True.")


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `tensors` to `path` atomically; an existing file is replaced only with `overwrite`."""
    _check_target(Path(path), overwrite)
    return files.save_safetensors_atomic(tensors, path, metadata)


def publish_folder(write: Callable[[Path], None], out_dir: str | Path, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` on a fresh folder next to `out_dir`, then rename it to `out_dir`.

    With `overwrite`, an existing `out_dir` is moved aside first and deleted only after the new folder is in place.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    old = out_dir.with_name(f"{tmp.name}.old")
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp creates 0700
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
    return out_dir
