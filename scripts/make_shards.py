"""Convert an image folder with captions into webdataset shards.

    python scripts/make_shards.py IMAGE_DIR OUT_DIR [--samples-per-shard 1000] [--captions captions.csv]

Captions come from same-named .txt files next to the images, or from a CSV (columns file,caption) /
JSONL ({"file": ..., "caption": ...}) file with paths relative to IMAGE_DIR. Prints what was written
and what was skipped, by reason; the shard pattern it prints is what `data.train_shards` takes.
"""

import argparse
import logging

from ldm_train.data.image_folder import folder_to_shards

logger = logging.getLogger("make_shards")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_dir", help="folder of .jpg/.jpeg/.png/.webp images (searched recursively)")
    parser.add_argument("out_dir", help="where the .tar shards and manifest.json are written")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument(
        "--captions", default=None, help="a .csv or .jsonl of file,caption (default: .txt sidecars)"
    )
    parser.add_argument("--prefix", default="shard", help="shard file names: <prefix>-000000.tar, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = folder_to_shards(
        args.image_dir, args.out_dir, args.samples_per_shard, args.captions, args.prefix
    )
    logger.info(report.summary())


if __name__ == "__main__":
    main()
