"""Atomic safetensors writes: a temp file in the target folder, then a rename, so a killed process
never leaves half a file where a loader would find it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None
) -> Path:
    """Write `tensors` (and string `metadata`) to `path` via `.<name>.<pid>.tmp` + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never collide
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
