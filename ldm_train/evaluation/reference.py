"""The real images a run is compared with, and their features, computed once and cached.

A reference is the first `n` images of a dataset split at the evaluation resolution. Its features
(Inception pool3 for FID/KID) are cached per (dataset, split, resolution, feature network) in the
assets folder; a cache with at least `n` rows serves any smaller `n` by its first rows, so the 2,000-
image reference of the demo and the full 10,000-image test set share one file. Computing the
features is split over the ranks of a run like every other evaluation step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ldm_train.assets import assets_dir
from ldm_train.evaluation.sharding import gather_rows, rank_and_world, shard
from ldm_train.files import save_safetensors_atomic
from ldm_train.metrics.fashion_data import fashion_mnist_tensors

log = logging.getLogger(__name__)
FEATURES_KEY = "features"
DATASETS = ("fashion_mnist",)


@dataclass(frozen=True, kw_only=True)
class RealReference:
    """The first `n` images of `dataset`/`split`, resized (antialiased bilinear) to `resolution`."""

    dataset: str = "fashion_mnist"  # the built-in data (the only source implemented so far)
    split: str = "test"  # "test": the 10,000-image Fashion-MNIST test split; "train": 60,000
    # How many images, taken from the start of the split (a fixed, ordered set). No default: each caller
    # sizes its own (the in-loop evaluation configs, `scripts/evaluate.py`'s reference_n).
    n: int
    resolution: int = 32  # the frame samples are compared in: the training resolution

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"reference dataset {self.dataset!r} is not built in; choose one of {DATASETS}")
        if self.n < 2:
            raise ValueError(f"a reference needs n >= 2 images (FID needs a covariance), got {self.n}")

    @property
    def label(self) -> str:
        """How reports name it: `fashion_mnist test[:10000] @32px`."""
        return f"{self.dataset} {self.split}[:{self.n}] @{self.resolution}px"

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images n×1×R×R (grey, as stored) and their int64 labels."""
        images, labels = fashion_mnist_tensors(self.split, self.n)
        if len(images) < self.n:
            raise ValueError(f"{self.dataset} {self.split} holds {len(images)} images; the reference asks for {self.n}")
        return resize_uint8(images, self.resolution), labels


def resize_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:  # N×C×H×W uint8 -> N×C×R×R uint8
    """Antialiased bilinear resize, rounded back to uint8 levels (what a saved PNG would hold)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    resized = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # B×C×H×W (uint8 or [-1, 1]) -> B×D


@torch.no_grad()
def extract_features(
    extractor: nn.Module | FeatureFn, images: torch.Tensor, batch_size: int, device: torch.device | str
) -> torch.Tensor:  # N×C×H×W -> N×D float32 on CPU
    """Features of `images` in batches on `device`; an empty input gives an empty N×0 tensor."""
    out = [extractor(batch.to(device)).float().cpu() for batch in images.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def cache_path(reference: RealReference, feature_name: str) -> Path:
    return (
        assets_dir() / "eval_reference"
        / f"{reference.dataset}_{reference.split}_{reference.resolution}px_{feature_name}.safetensors"
    )


def reference_features(
    reference: RealReference,
    extractor: nn.Module | FeatureFn,
    feature_name: str | None,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
) -> torch.Tensor:  # n×D on CPU, on every rank
    """Features of the reference's images: from the cache when it holds ≥ n rows, else computed
    (each rank its share, gathered) and cached by rank 0. `feature_name=None` disables the cache
    (feature networks other than the verified Inception)."""
    path = cache_path(reference, feature_name) if feature_name else None
    if path is not None and path.is_file():
        cached = load_file(str(path))[FEATURES_KEY]
        if len(cached) >= reference.n:
            log.info("Reference features of %s from %s", reference.label, path)
            return cached[: reference.n]
    images, _ = reference.load()
    indices = shard(reference.n)
    log.info("Computing %s features of %s (%d on this rank; cached afterwards)",
             feature_name or "feature", reference.label, len(indices))
    local = extract_features(extractor, images[indices], batch_size, device)
    features = gather_rows(local, reference.n, device)
    if path is not None and rank_and_world()[0] == 0:
        save_safetensors_atomic({FEATURES_KEY: features}, path)
    return features
