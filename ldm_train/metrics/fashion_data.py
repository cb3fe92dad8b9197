"""Fashion-MNIST as in-memory tensors for evaluation: padded exactly like the training shards.

The training pipeline stores 28×28 digits padded by 2 px of background to 32×32 and replicates grey
to RGB in the loader; evaluation must see the same pixels, so it reuses the data package's reader and
padding. Images stay uint8 (61 MB for the 60k train split; float RGB would be 12× that) and are
converted per batch with `to_model_range`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm_train.data.fashion_mnist import DEBIAN_DIR, PAD, load_split

PIXEL_MAX = 255
RGB = 3


def fashion_mnist_tensors(
    split: str, limit: int | None = None, source_dir: str = DEBIAN_DIR
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images N×1×32×32 (background-padded) and int64 labels N; `limit` keeps the first N."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None (the whole split), got {limit}")
    images, labels = load_split(split, source_dir)  # never downloads: fails fast naming the apt package
    images = torch.from_numpy(images[:limit].copy()).unsqueeze(1)
    labels = torch.from_numpy(labels[:limit].astype("int64"))
    return F.pad(images, (PAD, PAD, PAD, PAD)), labels


def to_model_range(images: torch.Tensor) -> torch.Tensor:  # B×1×H×W uint8 -> B×3×H×W float in [-1, 1]
    """uint8 grey -> the float RGB range the networks see (grey replicated, as the data loader does)."""
    return (images.float() / (PIXEL_MAX / 2) - 1).expand(-1, RGB, -1, -1)
