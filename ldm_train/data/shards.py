"""Writing webdataset shards, and the manifest that records what a conversion wrote.

Shards are written under a temporary name and published (synced, renamed: ldm_train/files.py) when
complete, so an interrupted conversion never leaves a truncated shard under a final name; the manifest
is written last and marks the whole conversion as done (a second conversion call can then return at once).
"""

import json
import os
from pathlib import Path

from webdataset import TarWriter

from ldm_train.files import atomic_write, publish

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SHARD_DIGITS = 6
# A fixed member timestamp makes shards byte-identical across runs on the same inputs.
TAR_MTIME = 0  # an int: a float mtime makes tarfile add a 1 KiB PAX header per member


def shard_pattern(prefix: str, num_shards: int) -> str:
    """ "train", 3 -> "train-{000000..000002}.tar" (webdataset brace notation)."""
    last = max(num_shards - 1, 0)
    return f"{prefix}-{{{0:0{SHARD_DIGITS}d}..{last:0{SHARD_DIGITS}d}}}.tar"


class ShardWriter:
    """Writes samples ({"__key__": str, "<ext>": bytes | str | dict, ...}) into
    `<out_dir>/<prefix>-000000.tar`, `-000001.tar`, ... with `samples_per_shard` samples each."""

    def __init__(self, out_dir: str | Path, prefix: str, samples_per_shard: int):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.samples_per_shard = prefix, samples_per_shard
        self.shards: list[str] = []
        self.count = 0
        self._writer: TarWriter | None = None
        self._in_shard = 0

    def write(self, sample: dict) -> None:
        if self._writer is None or self._in_shard == self.samples_per_shard:
            self._finish_shard()
            self._writer = TarWriter(str(self._temp_path(len(self.shards))), mtime=TAR_MTIME)
            self._in_shard = 0
        self._writer.write(sample)
        self._in_shard += 1
        self.count += 1

    def close(self) -> list[str]:
        """Finishes the last shard; returns the paths of all shards written."""
        self._finish_shard()
        return self.shards

    @property
    def pattern(self) -> str:
        return str(self.out_dir / shard_pattern(self.prefix, len(self.shards)))

    def _final_path(self, index: int) -> Path:
        return self.out_dir / f"{self.prefix}-{index:0{SHARD_DIGITS}d}.tar"

    def _temp_path(self, index: int) -> Path:
        return self._final_path(index).with_name(f"{self._final_path(index).name}.tmp-{os.getpid()}")

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        index = len(self.shards)
        publish(self._temp_path(index), self._final_path(index))
        self.shards.append(str(self._final_path(index)))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        elif self._writer is not None:  # leave no half-written shard behind
            self._writer.close()
            self._temp_path(len(self.shards)).unlink(missing_ok=True)


def write_manifest(out_dir: str | Path, splits: dict[str, dict], **info) -> Path:
    """splits: {"train": {"pattern": <pattern relative to out_dir>, "count": int, "shards": int}}."""
    path = Path(out_dir) / MANIFEST_NAME
    text = json.dumps({"format": MANIFEST_FORMAT, "splits": splits, **info}, indent=2)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of `out_dir`, or None when there is none (conversion not done or interrupted)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("format") == MANIFEST_FORMAT else None
