"""Write a latent + text-embedding cache (format: ldm_train/data/latents.py) from image-caption shards.

One cache shard per source shard, with the same file name (sources that share a file name in different folders
get a short hash of their folder: `cache_shard_names`), published atomically when complete: after a kill the
finished shards are kept and a rerun redoes only the rest (first deleting the temporary file a killed process
left for a shard it owns). A shard's bytes depend only on its samples' encodings (a fixed member timestamp, the
same batches every run), so a resumed cache equals an uninterrupted one. Rank r of W encodes the source shards
i with i mod W = r, so no shard is encoded twice. The manifest (VAE weight hash, resolution, the shard list) is
written by every rank (same content) before any shard, and a rerun with another VAE is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_tensors
from torch import nn
from webdataset import TarWriter

from ldm_train.data.decode import SkipSample
from ldm_train.data.latents import (
    CACHE_FORMAT,
    CAPTION_EXT,
    CONTEXT_KEY,
    LATENT_MEAN_KEY,
    LATENT_STD_KEY,
    MANIFEST,
    SOURCE_EXT,
    TENSORS_EXT,
    state_hash,
)
from ldm_train.data.samples import SampleDecoder
from ldm_train.data.shards import TAR_MTIME
from ldm_train.data.stream import SkipCounter, read_shard
from ldm_train.data.transforms import ResizeCrop
from ldm_train.files import atomic_write, temp_pattern

log = logging.getLogger(__name__)
FOLDER_HASH_CHARS = 8  # hex digits of the folder hash that tells apart sources with one file name


def cache_shard_names(sources: list[str]) -> list[str]:
    """Each source's cache shard name: its file name, or where several sources share it (part-00/000000.tar,
    part-01/000000.tar) `<stem>-<hash of its folder as given>.<extensions>` (000000-3fa2b1c4.tar). A source
    listed twice, or two names that still clash, are refused before anything is written."""
    listed = Counter(sources)
    twice = [source for source, count in listed.items() if count > 1]
    if twice:
        raise ValueError(f"source shard {twice[0]} is listed {listed[twice[0]]} times; list each shard once")
    shared = Counter(Path(source).name for source in sources)
    names = []
    for source in sources:
        name = Path(source).name
        if shared[name] > 1:
            stem, dot, extensions = name.partition(".")
            folder = hashlib.sha256(str(Path(source).parent).encode()).hexdigest()[:FOLDER_HASH_CHARS]
            name = f"{stem}-{folder}{dot}{extensions}"
        names.append(name)
    first: dict[str, str] = {}
    for source, name in zip(sources, names):
        if name in first:
            raise ValueError(f"source shards {first[name]} and {source} would both be cached as {name}; "
                             "rename one of them")  # fmt: skip
        first[name] = source
    return names


def _manifest(out_dir: Path, sources: list[str], names: list[str], first_stage: nn.Module,
              text_encoder: nn.Module, resolution: int) -> dict:  # fmt: skip
    manifest = {
        "format": CACHE_FORMAT,
        "vae_hash": state_hash(first_stage),
        "vae_source": str(getattr(first_stage, "source", None)),
        "text_encoder": type(text_encoder).__name__,
        "text_encoder_hash": state_hash(text_encoder),
        "resolution": resolution,
        "sources": sources,
        "shards": names,
    }
    path = out_dir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        # "shards": a cache begun before shard names were made unique may name two shards alike.
        keys = ("vae_hash", "text_encoder_hash", "resolution", "sources", "shards")
        changed = [k for k in keys if old.get(k) != manifest[k]]
        if changed:
            raise ValueError(
                f"{out_dir} holds a latent cache made with other {', '.join(changed)} "
                f"(VAE {old.get('vae_source')}); write this one to another folder, or delete {out_dir}"
            )
        return old
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    return manifest


@torch.no_grad()
def _encode_batch(examples: list[dict], first_stage: nn.Module, text_encoder: nn.Module,
                  device: torch.device) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    images = torch.stack([e["image"] for e in examples]).to(device).float()  # B×3×H×W in [-1, 1]
    posterior = first_stage.encode(images)  # posterior over B×C×h×w, in fp32 (never autocast here)
    context = text_encoder([e["caption"] for e in examples]).float()  # B×L×D
    return [{LATENT_MEAN_KEY: m, LATENT_STD_KEY: s, CONTEXT_KEY: c}
            for m, s, c in zip(posterior.mean.cpu(), posterior.std.cpu(), context.cpu())]  # fmt: skip


def _write_shard(source: str, target: Path, decoder: SampleDecoder, first_stage: nn.Module,
                 text_encoder: nn.Module, batch_size: int, device: torch.device) -> int:  # fmt: skip
    counter = SkipCounter(source)
    written = []
    rng = np.random.default_rng(0)  # the decoder draws nothing without augmentation; required by its signature

    def write(tmp: Path) -> None:
        with TarWriter(str(tmp), mtime=TAR_MTIME) as sink:
            pending: list[dict] = []

            def flush() -> None:
                for example, tensors in zip(pending, _encode_batch(pending, first_stage, text_encoder, device)):
                    sink.write({"__key__": example["key"], TENSORS_EXT: save_tensors(tensors),
                                CAPTION_EXT: example["caption"], SOURCE_EXT: example["key"]})  # fmt: skip
                written.extend(e["key"] for e in pending)
                pending.clear()

            for raw in read_shard(source, counter):
                try:
                    pending.append({**decoder(raw, rng), "key": raw["__key__"]})
                except SkipSample as reason:
                    counter.skip(str(reason), f"sample {raw.get('__key__')!r} of {source}")
                    continue
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
            if not written:  # e.g. a wrong caption key: every sample skipped; nothing is published
                raise ValueError(f"{source}: no usable sample ({counter.total} skipped; see the log for why); "
                                 "check --caption-key and --resolution")

    atomic_write(target, write)
    return counter.total


def write_latent_cache(
    sources: list[str],  # source shard paths (all of them; this rank takes its share)
    out_dir: str | Path,
    first_stage: nn.Module,  # the frozen VAE: `encode` gives the posterior (mean, std)
    text_encoder: nn.Module,  # captions -> B×L×D contexts
    resolution: int,  # images are resized and centre-cropped to this (no flip: the cache is the unflipped view)
    batch_size: int = 64,
    caption_key: str = "txt",
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
) -> list[str]:
    """Encode this rank's unfinished shards; returns the names of the shards it wrote."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    sources = list(sources)
    names = cache_shard_names(sources)  # before anything is written: a clash is refused
    out_dir, device = Path(out_dir), torch.device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_stage.eval().to(device)
    text_encoder.eval().to(device)
    _manifest(out_dir, sources, names, first_stage, text_encoder, resolution)
    decoder = SampleDecoder(ResizeCrop(resolution, random_crop=False, hflip=False), caption_key=caption_key)
    written = []
    for index, (source, name) in enumerate(zip(sources, names)):
        target = out_dir / name
        if index % world_size != rank:  # another rank's (its temporary file may be in use)
            continue
        for stale in out_dir.glob(temp_pattern(target)):  # left by a process killed while writing this shard
            stale.unlink()
            log.info("rank %d: removed %s (an unfinished write of %s)", rank, stale, target.name)
        if target.exists():  # finished before a kill
            continue
        skipped = _write_shard(source, target, decoder, first_stage, text_encoder, batch_size, device)
        log.info("rank %d: %s -> %s (%d samples skipped)", rank, source, target, skipped)
        written.append(target.name)
    return written
