"""Loader throughput (images/s) at 32 and 256 px with 0, 1 and 2 workers, on JPEG shards generated
in a temporary folder. A measurement, not a test: numbers depend on the machine and its load.

    python scripts/bench_data.py [--images 512] [--batch-size 32]
"""

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_train.data import WebDatasetDataModule
from ldm_train.data.shards import ShardWriter

logger = logging.getLogger("bench_data")
SOURCE_SIZE = (512, 384)  # a typical small web photo, larger than both benchmark resolutions
JPEG_QUALITY = 90
RESOLUTIONS = (32, 256)
WORKER_COUNTS = (0, 1, 2)


def photo_like(rng: np.random.Generator) -> bytes:
    """Smooth random colour fields (JPEG-friendly like photos, unlike white noise)."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(SOURCE_SIZE, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_bench_shards(out_dir: Path, count: int, per_shard: int) -> str:
    rng = np.random.default_rng(0)
    with ShardWriter(out_dir, "bench", per_shard) as writer:
        for index in range(count):
            writer.write({"__key__": f"{index:06d}", "jpg": photo_like(rng), "txt": f"sample {index}"})
    return writer.pattern


def images_per_second(pattern: str, resolution: int, workers: int, batch_size: int) -> float:
    datamodule = WebDatasetDataModule(
        pattern, batch_size=batch_size, resolution=resolution, num_workers=workers, shuffle_buffer=100,
        persistent_workers=False, pin_memory=False,
    )  # fmt: skip
    datamodule.setup("fit")
    start = time.perf_counter()
    count = sum(len(batch["caption"]) for batch in datamodule.train_dataloader())
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        # Enough shards that every worker gets some; a whole epoch (worker start-up included) is timed.
        pattern = write_bench_shards(Path(tmp), args.images, per_shard=max(1, args.images // 8))
        logger.info("%d JPEGs of %dx%d, batch size %d", args.images, *SOURCE_SIZE, args.batch_size)
        for resolution in RESOLUTIONS:
            for workers in WORKER_COUNTS:
                rate = images_per_second(pattern, resolution, workers, args.batch_size)
                logger.info("%4d px  %d workers  %8.0f images/s", resolution, workers, rate)


if __name__ == "__main__":
    main()
