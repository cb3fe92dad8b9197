"""Helpers for the data tests: tiny images whose captions name their sample, so a test can tell
exactly which samples a loader produced."""

import io
import tarfile
from pathlib import Path

from PIL import Image
from webdataset import TarWriter

from ldm_train.data.shards import shard_pattern


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def good_sample(shard: int, index: int, size: int = 8) -> dict:
    """A valid sample whose caption is its identity, "s{shard}-{index}"."""
    image = Image.new("RGB", (size, size), (shard * 16 % 256, index % 256, 128))
    return {"__key__": f"s{shard}i{index}", "png": png_bytes(image), "txt": f"s{shard}-{index}"}


def write_shards(
    out_dir: Path, num_shards: int, per_shard: int, bad: dict[int, list[dict]] | None = None
) -> str:
    """`num_shards` shards of `per_shard` good samples; `bad` maps a shard index to extra samples
    inserted in the middle of that shard. Returns the brace pattern."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        samples = [good_sample(shard, index) for index in range(per_shard)]
        samples[per_shard // 2 : per_shard // 2] = (bad or {}).get(shard, [])
        with TarWriter(str(out_dir / f"shard-{shard:06d}.tar")) as writer:
            for sample in samples:
                writer.write(sample)
    return str(out_dir / shard_pattern("shard", num_shards))


def all_captions(num_shards: int, per_shard: int) -> set[str]:
    return {f"s{shard}-{index}" for shard in range(num_shards) for index in range(per_shard)}


def write_tar(path: Path, members: list[tuple[str, bytes]], tar_format: int = tarfile.USTAR_FORMAT) -> Path:
    """A tar of exactly these members, in order: repeated names included (which TarWriter cannot write)."""
    with tarfile.open(path, "w", format=tar_format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(sample: dict) -> list[tuple[str, bytes]]:
    """The tar members of a `good_sample`."""
    return [(f"{sample['__key__']}.{ext}", value if isinstance(value, bytes) else value.encode())
            for ext, value in sample.items() if ext != "__key__"]
