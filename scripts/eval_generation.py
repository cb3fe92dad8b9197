"""Text-to-image quality of a phase-2 model on Fashion-MNIST: class accuracy and FID.

    python scripts/eval_generation.py --ckpt outputs/ldm/<date>/<time> --per-class 100 \
        --sampler dpmpp_2m --steps 25 --guidance 3.0 --device cuda

Generates `--per-class` samples of "a photo of a <class>" for each of the 10 classes, classifies them
with the trained Fashion-MNIST classifier (`python scripts/train_classifier.py` makes it) and computes
the FID of all samples against the first `--fid-real` test images, whose Inception statistics are
cached in the assets folder after the first run. Prints one JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from torchmetrics.image.fid import FrechetInceptionDistance

from ldm_train.assets import assets_dir
from ldm_train.metrics.classifier import load_fashion_classifier
from ldm_train.metrics.fashion_data import fashion_mnist_tensors
from ldm_train.metrics.fid import fid_metric, load_real_statistics, save_real_statistics
from ldm_train.metrics.generation import class_prompts, fid_of_samples, generation_accuracy
from ldm_train.text_to_image import TextToImage

log = logging.getLogger("eval_generation")
TEST_SET_SIZE = 10_000


def real_fid_metric(n_real: int, batch_size: int, device: str) -> FrechetInceptionDistance:
    """A FID metric holding the statistics of the first `n_real` test images (cached per n_real)."""
    fid = fid_metric(reset_real_features=False).to(device)
    cache = assets_dir() / "fid_stats" / f"fashion_mnist_test_first{n_real}.safetensors"
    if cache.is_file():
        load_real_statistics(fid, cache)
        log.info("real FID statistics from %s", cache)
        return fid
    real, _ = fashion_mnist_tensors("test", n_real)
    log.info("encoding %d real test images with Inception (cached afterwards)", len(real))
    for batch in real.split(batch_size):
        fid.update(batch.to(device), real=True)  # uint8 grey; the extractor replicates it to RGB
    log.info("cached real FID statistics in %s", save_real_statistics(fid, cache))
    return fid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="phase-2 run directory, .ckpt, or `latest`")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="sampling batch size")
    parser.add_argument("--fid-batch-size", type=int, default=50)
    parser.add_argument(
        "--fid-real", type=int, default=TEST_SET_SIZE, help="first N test images as the FID reference"
    )
    parser.add_argument("--classifier", default=None, help="classifier file (default: the assets folder's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # Missing assets fail here, before minutes of sampling.
    classifier = load_fashion_classifier(args.classifier, args.device)
    fid = real_fid_metric(args.fid_real, args.fid_batch_size, args.device)
    pipe = TextToImage.from_checkpoint(args.ckpt, device=args.device)

    prompts, labels = class_prompts(args.per_class)
    start = time.perf_counter()
    images = pipe(
        prompts,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        output="tensor",
    )
    sampling_seconds = time.perf_counter() - start

    summary = {
        "ckpt": args.ckpt,
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "samples": len(prompts),
        "samples_per_s": len(prompts) / sampling_seconds,
        **generation_accuracy(images, labels, classifier),
        "fid": fid_of_samples(images, fid, args.fid_batch_size),
        "fid_real_images": args.fid_real,
    }
    text = json.dumps(summary, indent=2) + "\n"
    sys.stdout.write(text)  # the result, on stdout; logs go to stderr
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
