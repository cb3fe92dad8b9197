"""Reconstruction quality of a phase-1 autoencoder on the Fashion-MNIST test set.

    python scripts/eval_autoencoder.py --ckpt outputs/<run> --n 1000
    python scripts/eval_autoencoder.py --ckpt outputs/<run>/export --device cuda --lpips-net alex

Takes the first `--n` test images (deterministic), reconstructs each as decode(posterior mode) and
prints a JSON line with mean PSNR (dB), SSIM, LPIPS and the encode+decode throughput (images/s).
`--ckpt` is anything `ldm_train.autoencoder.export.load_first_stage` accepts: a run directory, its
`export/` folder or `autoencoder.safetensors`, or a diffusers VAE folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ldm_train.autoencoder.export import load_first_stage
from ldm_train.metrics.fashion_data import fashion_mnist_tensors, to_model_range
from ldm_train.metrics.reconstruction import evaluate_reconstruction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="phase-1 run directory or export")
    parser.add_argument("--n", type=int, default=1000, help="first N test images")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the JSON summary to this file")
    parser.add_argument(
        "--lpips-net",
        default="vgg",
        choices=["vgg", "alex", "none"],
        help="LPIPS backbone (none: skip LPIPS); vgg by default because AlexNet's stride-4 stem leaves 1×1 maps at 32 px",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    autoencoder = load_first_stage(args.ckpt).to(args.device)
    images, _ = fashion_mnist_tensors("test", args.n)
    channels = autoencoder.config["in_channels"]  # 3: grey replicated to RGB like the data loader; 1: grey
    batches = (to_model_range(batch)[:, :channels] for batch in images.split(args.batch_size))
    scores = evaluate_reconstruction(
        autoencoder, batches, lpips_net=None if args.lpips_net == "none" else args.lpips_net
    )
    # The result goes to stdout (pipe it into a file); logs go to stderr.
    text = json.dumps({"ckpt": args.ckpt, **scores}) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
