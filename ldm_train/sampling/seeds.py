"""Per-image seeds: image i's noise comes from its own generator, so it does not depend on the
batch size, on its position in the batch, or on the device.

Draws are made on the CPU (a CUDA generator yields different numbers than a CPU one) and moved to
the sampling device; they are sequential per generator — the initial noise first, then one draw
per stochastic step — which is also how diffusers' pipelines consume a list of generators, so a
seed gives the same noise here as `generator=[torch.Generator().manual_seed(seed), ...]` there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class PerImageNoise:
    """A `noise_fn` for the samplers, and the source of the initial noise, for one batch."""

    def __init__(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:  # shape: one image's C×H×W
        if len(seeds) == 0:
            raise ValueError("PerImageNoise needs one seed per image, got none")
        self.generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        self.shape = (1, *shape)
        self.device = torch.device(device)
        self.dtype = dtype

    def draw(self) -> Tensor:  # -> B×C×H×W
        """The next standard-normal tensor of every image's generator."""
        draws = [torch.randn(self.shape, generator=g, dtype=self.dtype) for g in self.generators]
        return torch.cat(draws).to(self.device)

    def __call__(self, step: int) -> Tensor:  # -> B×C×H×W
        """noise_fn protocol; samplers call it once per stochastic step, in step order."""
        return self.draw()


def initial_latents(noise: Tensor, sigma_max: Tensor | float) -> Tensor:  # B×C×H×W -> B×C×H×W
    """x at σ_0 from unit noise: x = x_T/√ᾱ_T with x_T ~ N(0, I), i.e. std √(1+σ_0²) —
    the VP prior that DDPM/DDIM start from, written in the samplers' VE convention."""
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float64)
    return noise * float((1 + sigma_max**2).sqrt())
