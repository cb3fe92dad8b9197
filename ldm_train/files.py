"""Files that appear whole or not at all: written under a temporary name in the target's folder,
synced to disk, then renamed over the target (a rename within one filesystem is atomic). A kill at
any moment leaves the previous complete file or the new one, never half a file where a loader
would find it. Checkpoints, exports, cached metric statistics and classifier weights all go here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

FILE_MODE = 0o644  # mkstemp creates 0600; these are shared files


def temp_pattern(path: Path) -> str:
    """Glob of the temporary files `atomic_write` uses for `path` (a killed writer leaves one)."""
    return f".{path.name}.*.tmp"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file next to `path`, fsync it, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        tmp.chmod(FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # and the rename itself survives a power cut
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """`tensors` (as CPU, contiguous copies) and string `metadata` to `path`, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
