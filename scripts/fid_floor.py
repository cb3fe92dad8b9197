"""How low can FID go here? FID and KID of real Fashion-MNIST *training* images — and of their
reconstructions by a phase-1 autoencoder — against the test-set reference, at the N of an evaluation.

    python scripts/fid_floor.py --per-class 100 --reference-n 2000 10000 [--vae outputs/autoencoder/<run>]

Real images give the floor of the metric itself at that N (what a perfect generator would score);
the reconstructions give the floor of a latent model on that VAE (a phase-2 model can at best
reproduce decoded latents). Same Inception pipeline and reference cache as `scripts/evaluate.py`.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ldm_train.autoencoder.export import load_first_stage
from ldm_train.evaluation.reference import RealReference, extract_features, reference_features
from ldm_train.metrics.distances import fid, kid
from ldm_train.metrics.fashion_data import fashion_mnist_tensors, to_model_range
from ldm_train.metrics.fid import INCEPTION_NAME, InceptionV3Features, to_uint8_levels
from ldm_train.metrics.reconstruction import reconstruct

NUM_CLASSES = 10


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class (the first ones)")
    parser.add_argument("--reference-n", type=int, nargs="+", default=[2000, 10_000])
    parser.add_argument("--vae", default=None, help="also score reconstructions by this phase-1 run or export")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)

    inception = InceptionV3Features()
    images, labels = fashion_mnist_tensors("train")
    picked = torch.cat([torch.nonzero(labels == c)[: args.per_class, 0] for c in range(NUM_CLASSES)])
    sets = {"real_train": images[picked]}
    if args.vae:
        vae = load_first_stage(args.vae).eval()
        channels = vae.config["in_channels"]
        sets["vae_reconstructions"] = torch.cat([
            to_uint8_levels(reconstruct(vae, to_model_range(batch)[:, :channels]).clamp(-1, 1)).to(torch.uint8)
            for batch in images[picked].split(args.batch_size)
        ])
    features = {name: extract_features(inception, batch, args.batch_size, "cpu") for name, batch in sets.items()}
    out = {"n": len(picked), "per_class": args.per_class}
    for n in args.reference_n:
        reference = reference_features(RealReference(n=n), inception, INCEPTION_NAME)
        for name, feats in features.items():
            out[f"{name}_vs_test{n}"] = {"fid": fid(reference, feats), "kid": kid(reference, feats)[0]}
    sys.stdout.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
