"""Latent normalisation owned by the autoencoder: the scale/shift that maps raw latents to ~unit variance.

LDM (Rombach et al. 2022, §4.3.2 / appendix D.1) rescales latents by 1/std of the first batch so the diffusion
model sees unit-variance data; SD's 0.18215 is that number for its VAE. EDM2 (Karras et al. 2024, `encoders.py`)
uses per-channel mean and std. Both are `normalize(z) = (z − shift) · scale`, with `scale` and `shift` per
channel, stored as buffers so they travel with the VAE weights — phase 2 never hard-codes a constant.
"""

from collections.abc import Sequence

import torch
from torch import nn


def _per_channel(value: float | Sequence[float] | torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """A scalar or a length-`channels` sequence as a float32 tensor of shape (channels,)."""
    t = (
        torch.as_tensor(list(value) if isinstance(value, Sequence) else value, dtype=torch.float32)
        .detach()
        .cpu()
    )
    if t.ndim == 0:
        return t.expand(channels).clone()
    if t.shape != (channels,):
        raise ValueError(
            f"LatentNorm {name} must be a scalar or have {channels} entries (one per latent channel), got {tuple(t.shape)}."
        )
    return t.clone()


class LatentNorm(nn.Module):
    """`normalize(z) = (z − shift)·scale` and its inverse, per latent channel."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self, channels: int, scale: float | Sequence[float] = 1.0, shift: float | Sequence[float] = 0.0
    ):
        super().__init__()
        self.channels = channels
        self.register_buffer("scale", _per_channel(scale, channels, "scale"))
        self.register_buffer("shift", _per_channel(shift, channels, "shift"))

    def _view(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (C,) -> 1×C×1×1 in z's dtype
        if z.shape[1] != self.channels:
            raise ValueError(
                f"LatentNorm was built for {self.channels} latent channels, got a tensor with {z.shape[1]}."
            )
        return t.to(z.dtype).view(1, -1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:  # raw latents B×C×h×w -> diffusion-space B×C×h×w
        return (z - self._view(self.shift, z)) * self._view(self.scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:  # diffusion-space B×C×h×w -> raw latents B×C×h×w
        return z / self._view(self.scale, z) + self._view(self.shift, z)

    @torch.no_grad()
    def set_from_statistics(
        self,
        std: float | Sequence[float] | torch.Tensor,
        mean: float | Sequence[float] | torch.Tensor = 0.0,
        target_std: float = 1.0,
    ) -> None:
        """Set scale = target_std / std and shift = mean, from statistics of *raw* latents.

        Scalar `std` with `mean=0` is LDM/SD's convention (z·scale); per-channel `mean`/`std` is EDM2's.
        The caller computes the statistics (all-reduced across ranks) so every rank stores the same numbers.
        """
        std_t = _per_channel(std, self.channels, "std")
        if not torch.isfinite(std_t).all() or (std_t <= 0).any():
            raise ValueError(
                f"LatentNorm std must be finite and positive, got {std_t.tolist()}; are the latents constant or NaN?"
            )
        mean_t = _per_channel(mean, self.channels, "mean")
        if not torch.isfinite(mean_t).all():
            raise ValueError(f"LatentNorm mean must be finite, got {mean_t.tolist()}.")
        self.scale.copy_(target_std / std_t)
        self.shift.copy_(mean_t)

    @property
    def is_identity(self) -> bool:
        """True while no statistics were set (scale 1, shift 0): phase 2 should calibrate or load them first."""
        return bool((self.scale == 1).all() and (self.shift == 0).all())

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale.tolist()}, shift={self.shift.tolist()}"
