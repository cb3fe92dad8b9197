"""Checkpoint files: written atomically, and found again by run directory or `latest`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the target folder, fsync, then rename over the target.

    A kill at any moment leaves either the previous complete checkpoint or the new complete one,
    never a truncated `last.ckpt` (Lightning's default writes the target file in place)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # remote filesystems: fsspec's own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are shared files
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def find_checkpoint(path: str | Path, stage: str, log_dir: str | Path = "outputs") -> Path:
    """A `.ckpt` file; a run directory (→ its `checkpoints/last.ckpt`); or `latest` (→ the newest
    run of `stage` under `log_dir` that has one)."""
    if str(path) == "latest":
        runs = sorted(Path(log_dir, stage).glob(f"*/*/checkpoints/{LAST}"), key=lambda p: p.parent.parent.parts)
        if not runs:
            raise FileNotFoundError(
                f"ckpt=latest: no {stage} run with checkpoints/{LAST} under {Path(log_dir, stage)}. "
                f"Train one with `python train.py stage={stage}` or pass ckpt=<run dir or .ckpt>."
            )
        return runs[-1]
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / LAST
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a .ckpt file or a run directory holding checkpoints/{LAST}.")
    return path
