"""The latent + text-embedding cache (scripts/precompute_latents.py writes it; `data=latents` reads it).

Each sample of a cache shard holds `latents.safetensors` (the frozen VAE's posterior mean and std, C×h×w, and
the text encoder's context, L×D, all fp32), the caption (`txt`) and the source sample's key (`source.txt`).
Training draws a fresh posterior sample z = mean + std·ε every step (as on-the-fly encoding does), so the
cache changes no distribution, only the cost. The cache's `latent_cache.json` records the VAE's weight hash
and the text encoder's (`state_hash`): a cache made with another VAE or text encoder is refused when training
starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from torch import nn

from ldm_train.constraints import NonNegativeInt, PositiveInt, check_arguments
from ldm_train.data.datamodule import WebDatasetDataModule
from ldm_train.data.decode import SkipSample

LATENT_MEAN_KEY, LATENT_STD_KEY, CONTEXT_KEY = "latent_mean", "latent_std", "context"
TENSORS_EXT = "latents.safetensors"  # per-sample member of a cache shard
CAPTION_EXT, SOURCE_EXT = "txt", "source.txt"
MANIFEST = "latent_cache.json"
CACHE_FORMAT = 1


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, values): which VAE made a cache, whatever
    file format it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def sample_cached_latents(
    batch: dict, latent_norm: nn.Module, noise: torch.Tensor | None = None
) -> torch.Tensor:  # batch latent_mean, latent_std B×C×h×w -> normalised B×C×h×w
    """A posterior sample z = mean + std·ε (ε ~ N(0, I), or `noise`), normalised like `encode_latents`."""
    mean, std = batch[LATENT_MEAN_KEY], batch[LATENT_STD_KEY]
    noise = torch.randn_like(mean) if noise is None else noise
    return latent_norm.normalize(mean + std * noise)


def read_manifest(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {cache_dir} is not a latent cache; write one with scripts/precompute_latents.py"
        )
    return json.loads(path.read_text())


def cache_shards(cache_dir: str | Path, manifest: dict) -> list[str]:
    """The cache's shards, all of them: an unfinished cache (a killed precompute) is refused."""
    paths = [Path(cache_dir) / name for name in manifest["shards"]]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ValueError(
            f"latent cache {cache_dir} is unfinished: {len(missing)} of {len(paths)} shards missing "
            f"({', '.join(missing[:3])}...); rerun scripts/precompute_latents.py with the same arguments to finish it"
        )
    return [str(p) for p in paths]


def check_frozen(manifest: dict, first_stage: nn.Module, text_encoder: nn.Module, cache_dir: str | Path) -> None:
    """Refuse a cache made with another VAE or another text encoder than the run's: its latents or contexts
    would not be the ones this run's sampling (and its evaluation) decodes and conditions on."""
    rerun = "rerun scripts/precompute_latents.py with"
    networks = (  # what, manifest key, the cache's network, ours, its name, the fix
        ("VAE", "vae_hash", manifest.get("vae_source"), first_stage, getattr(first_stage, "source", "?"),
         f"{rerun} this VAE, or set first_stage.ckpt to the cache's VAE"),
        ("text encoder", "text_encoder_hash", manifest.get("text_encoder"), text_encoder, type(text_encoder).__name__,
         f"{rerun} this run's text_encoder=..., or train with the cache's text encoder"),
    )  # fmt: skip
    for what, key, theirs, module, name, fix in networks:
        ours = state_hash(module)
        if manifest[key] != ours:
            raise ValueError(
                f"latent cache {cache_dir} was made with another {what} ({theirs}, weight hash {manifest[key][:12]}) "
                f"than this run's ({name}, {ours[:12]}): {fix}"
            )


class LatentSampleDecoder:
    """Raw cache sample -> {"latent_mean", "latent_std", "context", "caption", "key"}; brings its own collate."""

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if TENSORS_EXT not in sample:
            raise SkipSample(f"no {TENSORS_EXT} member: not a latent-cache sample")
        tensors = load_tensors(sample[TENSORS_EXT])
        caption = sample.get(CAPTION_EXT, b"")
        source = sample.get(SOURCE_EXT, b"")
        return {**{k: tensors[k] for k in (LATENT_MEAN_KEY, LATENT_STD_KEY, CONTEXT_KEY)},
                "caption": caption.decode() if isinstance(caption, bytes) else caption,
                "key": source.decode() if isinstance(source, bytes) else source}  # fmt: skip

    @staticmethod
    def collate(examples: list[dict], skipped: int) -> dict:
        batch = {k: torch.stack([e[k] for e in examples]) for k in (LATENT_MEAN_KEY, LATENT_STD_KEY, CONTEXT_KEY)}
        return {**batch, "caption": [e["caption"] for e in examples], "key": [e["key"] for e in examples],
                "skipped": skipped}  # fmt: skip


class LatentDataModule(WebDatasetDataModule):
    """Phase-2 batches from a latent cache: {"latent_mean", "latent_std", "context", "caption", "key", "skipped"}.

    The same stream as WebDatasetDataModule (rank/worker split, shuffling, fixed-length epochs, resume);
    no image decoding, no augmentation (the cache holds the centre crop, unflipped).
    """

    def __init__(
        self,
        cache_dir: str,
        val_cache_dir: str | None = None,
        resolution: PositiveInt | None = None,
        batch_size: PositiveInt = 32,
        val_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 2,
        shuffle_buffer: NonNegativeInt = 1000,
        samples_per_epoch: PositiveInt | None = None,
        resampled: bool = False,
        seed: NonNegativeInt = 0,
        persistent_workers: bool = True,
        pin_memory: bool = True,
        prefetch_factor: PositiveInt = 2,
        rank: NonNegativeInt = 0,
        world_size: PositiveInt = 1,
    ):
        check_arguments(LatentDataModule.__init__, locals())
        self.manifest = read_manifest(cache_dir)
        if resolution is not None and resolution != self.manifest["resolution"]:
            raise ValueError(f"data.resolution={resolution} but the cache {cache_dir} holds "
                             f"{self.manifest['resolution']}² images; set data.resolution=null or to that")
        self.cache_dir, self.val_cache_dir = cache_dir, val_cache_dir
        train = "::".join(cache_shards(cache_dir, self.manifest))
        val = None if val_cache_dir is None else "::".join(cache_shards(val_cache_dir, read_manifest(val_cache_dir)))
        super().__init__(train, val, batch_size, val_batch_size, self.manifest["resolution"], num_workers,
                         caption_key=None, hflip=False, shuffle_buffer=shuffle_buffer,
                         samples_per_epoch=samples_per_epoch, resampled=resampled, seed=seed,
                         persistent_workers=persistent_workers, pin_memory=pin_memory,
                         prefetch_factor=prefetch_factor, rank=rank, world_size=world_size)  # fmt: skip

    def check_frozen(self, first_stage: nn.Module, text_encoder: nn.Module) -> None:
        """Called by the phase-2 module when training starts: the cache must come from its VAE and text encoder."""
        check_frozen(self.manifest, first_stage, text_encoder, self.cache_dir)
        if self.val_cache_dir is not None:
            check_frozen(read_manifest(self.val_cache_dir), first_stage, text_encoder, self.val_cache_dir)

    def _stream(self, urls: list[str], batch_size: int, augment: bool, batches_per_epoch: int | None = None):
        stream = super()._stream(urls, batch_size, augment, batches_per_epoch)
        stream.decoder = LatentSampleDecoder()
        return stream
