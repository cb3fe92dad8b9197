"""Files that appear whole or not at all: written under a temporary name in the target's folder,
synced to disk, then renamed over the target (a rename within one filesystem is atomic). A kill at
any moment leaves the previous complete file or the new one, never half a file where a loader
would find it. Checkpoints, exports (files and whole folders), data shards, cached metric statistics
and classifier weights all go here: the one atomic-write module. Its reading side for weights given by a
user (pretrained checkpoints in any layout) is `read_state_dict`, safe to call on untrusted files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE_MODE = 0o644  # mkstemp creates 0600; these are shared files
TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"  # every temporary name used here, and nothing else
DIR_MODE = 0o755  # mkdtemp creates 0700
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # torch pickles of a state_dict


def temp_pattern(path: Path) -> str:
    """Glob of the temporary files `atomic_write` uses for `path` (a killed writer leaves one)."""
    return f".{path.name}.*{TEMP_SUFFIX}"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file next to `path`, fsync it, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Make the complete file `tmp` (in `path`'s folder) visible as `path`: fsync, rename, fsync the folder.
    For writers that stream into a temporary file of their own (data shards); others use `atomic_write`."""
    tmp, path = Path(tmp), Path(path)
    _fsync_file(tmp)  # the data is on disk before the rename makes it visible
    tmp.chmod(FILE_MODE)
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # and the rename itself survives a power cut
    return path


def check_target(path: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing `path` unless `overwrite` (user-named export targets)."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another output path or pass overwrite=True.")


def replace_durably(source: str | Path, target: str | Path) -> Path:
    """Rename the complete file `source` over `target` (same folder) and sync the folder."""
    target = Path(target)
    os.replace(source, target)
    _fsync_dir(target.parent)
    return target


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files of unfinished writes below `directory` (call it only while no
    process writes there, e.g. when a run starts and holds its lock); returns what was removed."""
    removed = []
    for path in sorted(Path(directory).rglob(TEMP_GLOB)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """`tensors` (as CPU, contiguous copies) and string `metadata` to `path`, atomically; an existing file is
    replaced unless `overwrite=False`."""
    check_target(path, overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def publish_folder(write: Callable[[Path], None], out_dir: str | Path, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` on a fresh folder next to `out_dir`, sync its files, then rename it to `out_dir`.

    With `overwrite`, an existing `out_dir` is moved aside first and deleted only after the new folder is in place.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    old = out_dir.with_name(f"{tmp.name}.old")
    try:
        write(tmp)
        for file in (p for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()):
            _fsync_file(file)
        tmp.chmod(DIR_MODE)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
    return out_dir


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch pickle (loaded with weights_only=True, so a file that
    pickles code is refused; a Lightning or SD checkpoint's `state_dict` entry is unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: unknown checkpoint type {path.suffix!r}; use .safetensors or one of {', '.join(PICKLE_SUFFIXES)}."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError depending on what it refuses
        raise ValueError(
            f"{path} could not be loaded with weights_only=True ({err}); re-save only its state_dict, "
            "or convert it to .safetensors."
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors).")
    return dict(obj)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
