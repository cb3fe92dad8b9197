"""Precompute phase 2's latent + text-embedding cache: the frozen VAE's posterior (mean, std) and the text
encoder's contexts over webdataset shards, once (format: ldm_train/data/latents.py). Train from it with
`data=latents data.cache_dir=<out>`.

The VAE and the text encoder are chosen with the training overrides, so they are exactly the run's:

    python scripts/precompute_latents.py --shards 'data/train-{000000..000059}.tar' --out outputs/latents/train \\
        --resolution 32 -- experiment=fashion_mnist text_encoder=minilm first_stage.ckpt=<phase-1 run>

Resumable (a rerun after a kill redoes only unfinished shards) and sharded across ranks: run one process per
rank with --rank/--world-size (or under torchrun, which sets RANK and WORLD_SIZE); each takes every
world_size-th source shard.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from ldm_train.data.latent_writer import write_latent_cache
from ldm_train.data.shardlist import expand_shards
from ldm_train.speed import default_device
from ldm_train.train import CONFIG_DIR

log = logging.getLogger("precompute_latents")


def networks(overrides: list[str]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The frozen VAE and text encoder that `train.py stage=ldm <overrides>` would build."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=["stage=ldm", "evaluation=none", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)  # paths interpolate hydra's runtime values
    return instantiate(cfg.first_stage), instantiate(cfg.text_encoder)


def main(argv: list[str] | None = None) -> list[str]:
    """Returns the names of the cache shards this rank wrote."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="source shards: brace pattern, folder, or '::'-joined")
    parser.add_argument("--out", required=True, help="the cache folder (data.cache_dir)")
    parser.add_argument("--resolution", type=int, required=True, help="image size, as data.resolution")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--caption-key", default="txt", help='"txt" or "json:<field>", as data.caption_key')
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--device", default=None, help="default: this rank's accelerator (LOCAL_RANK), else the CPU")
    parser.add_argument("overrides", nargs="*", help="training overrides choosing first_stage and text_encoder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = args.device or default_device(int(os.environ.get("LOCAL_RANK", 0)))
    first_stage, text_encoder = networks(args.overrides)
    written = write_latent_cache(expand_shards(args.shards), args.out, first_stage, text_encoder, args.resolution,
                                 args.batch_size, args.caption_key, args.rank, args.world_size, device)  # fmt: skip
    log.info("rank %d/%d wrote %d shards into %s", args.rank, args.world_size, len(written), args.out)
    return written


if __name__ == "__main__":
    main()
