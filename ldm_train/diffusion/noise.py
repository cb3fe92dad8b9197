"""Training noise ε, optionally with offset noise.

Offset noise (Guttenberg 2023, "Diffusion with Offset Noise", crosslabs.org): adding a per-image,
per-channel constant `offset · N(0, 1)` to ε lets the model change an image's mean brightness,
which a schedule whose terminal SNR is not zero otherwise leaks from x_0 into x_T and never
learns to generate (very dark / very bright images). The usual strength is 0.1. Zero-terminal-SNR
schedules (Lin et al. 2024) fix the same problem at its root; the two are independent options.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_noise(
    like: Tensor, offset: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:  # B×C×H×W -> B×C×H×W
    """ε ~ N(0, I) shaped like `like` (+ offset noise). A `generator` draws on its own device."""
    if offset < 0:
        raise ValueError(f"offset noise strength must be >= 0 (typically 0.1), got {offset}")
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    if offset > 0:
        per_channel = (like.shape[0], like.shape[1]) + (1,) * (like.ndim - 2)
        noise = noise + offset * torch.randn(
            per_channel, generator=generator, device=device, dtype=like.dtype
        )
    return noise.to(like.device)
