"""Discrete variance-preserving noise schedules: q(x_t | x_0) = N(√ᾱ_t·x_0, (1 − ᾱ_t)·I).

A `NoiseSchedule` is nothing but the betas of Ho et al. (2020) and their cumulative product ᾱ,
held in float64 (a 1000-term cumulative product in float32 drifts by ~5e-7) and handed out in
float32 on the device of the timesteps that index them. The constructors reproduce diffusers'
`beta_schedule` options, so a model trained here samples with diffusers' schedulers unchanged.

Notation (Kingma et al. 2021, "Variational Diffusion Models"): α_t = √ᾱ_t scales the signal,
σ_t = √(1 − ᾱ_t) the noise, SNR(t) = α_t² / σ_t². The variance-exploding ("VE", Karras et al. 2022)
noise level of the same marginal, used by k-diffusion-style samplers on x_t / α_t, is
σ_VE(t) = σ_t / α_t = √((1 − ᾱ_t) / ᾱ_t) = 1 / √SNR(t).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ScheduleKind = Literal["scaled_linear", "linear", "cosine"]

# Nichol & Dhariwal (2021), eq. 17: the small offset s keeps β_t from being tiny near t = 0, and
# betas are clipped at 0.999 "to prevent singularities at the end of the diffusion process near t = T".
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


class NoiseSchedule:
    """Betas β_1..β_T and ᾱ_t = ∏_{s≤t} (1 − β_s), indexed by integer t in [0, T)."""

    def __init__(self, betas: Tensor) -> None:
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(
                f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(
                "every beta must lie in (0, 1]; build schedules with NoiseSchedule.scaled_linear/"
                "linear/cosine or pass betas from a diffusers scheduler's `.betas`"
            )
        self.betas = betas.detach().to(device="cpu", dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    # -- constructors (diffusers `beta_schedule` names in the docstrings) -------------------------

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> NoiseSchedule:
        """Stable Diffusion's schedule ("scaled_linear"): √β linear in t."""
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64)
        return cls(root**2)

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Ho et al. (2020)'s schedule ("linear")."""
        return cls(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> NoiseSchedule:
        """Nichol & Dhariwal (2021) eq. 17 ("squaredcos_cap_v2"): ᾱ(t) = f(t)/f(0),
        f(t) = cos²((t/T + s)/(1 + s) · π/2); β_t = 1 − ᾱ(t)/ᾱ(t−1), clipped at 0.999."""

        def f(u: float) -> float:
            return math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

        t = [i / num_timesteps for i in range(num_timesteps + 1)]
        betas = [min(1 - f(t[i + 1]) / f(t[i]), COSINE_MAX_BETA) for i in range(num_timesteps)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    def rescaled_zero_terminal_snr(self) -> NoiseSchedule:
        """Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
        shift and scale √ᾱ so that √ᾱ_T = 0 (pure noise at t = T) while √ᾱ_1 is unchanged."""
        root = self.alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
        alphas_cumprod = root**2
        alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
        return NoiseSchedule(1 - alphas)

    # -- accessors --------------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def has_zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    def alpha_bar(self, t: Tensor) -> Tensor:  # B (int) -> B (float32, t's device)
        return self._at(self.alphas_cumprod, t)

    def alpha(self, t: Tensor) -> Tensor:  # B -> B: signal scale √ᾱ_t
        return self._at(self.alphas_cumprod.sqrt(), t)

    def sigma(self, t: Tensor) -> Tensor:  # B -> B: noise scale √(1 − ᾱ_t)
        return self._at((1 - self.alphas_cumprod).sqrt(), t)

    def snr(self, t: Tensor) -> Tensor:  # B -> B: ᾱ_t / (1 − ᾱ_t); 0 at t = T under zero terminal SNR
        return self._at(self.alphas_cumprod / (1 - self.alphas_cumprod), t)

    def ve_sigmas(self) -> Tensor:  # T (float64, CPU): √((1 − ᾱ_t)/ᾱ_t), +inf where ᾱ_t = 0
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    def _at(self, table: Tensor, t: Tensor) -> Tensor:
        if t.dtype.is_floating_point:
            raise ValueError(
                f"timesteps index the schedule and must be integers, got {t.dtype}; "
                "round them first (e.g. `t.round().long()`)"
            )
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps}), got [{int(t.min())}, {int(t.max())}]"
            )
        return table.to(t.device)[t].float()

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.num_timesteps}, beta=[{self.betas[0]:.3g}, {self.betas[-1]:.3g}], "
            f"zero_terminal_snr={self.has_zero_terminal_snr})"
        )


def build_schedule(
    kind: ScheduleKind = "scaled_linear",
    num_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
    zero_terminal_snr: bool = False,
) -> NoiseSchedule:
    """Typed entry point for configs. `beta_start`/`beta_end` default to each kind's usual values
    (scaled_linear: SD's 0.00085..0.012; linear: DDPM's 1e-4..0.02); cosine takes neither."""
    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError("the cosine schedule has no beta_start/beta_end; remove them from the config")
        schedule = NoiseSchedule.cosine(num_timesteps)
    elif kind in ("scaled_linear", "linear"):
        make = NoiseSchedule.scaled_linear if kind == "scaled_linear" else NoiseSchedule.linear
        ends = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
        schedule = make(num_timesteps, **ends)
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; use one of 'scaled_linear', 'linear', 'cosine'")
    return schedule.rescaled_zero_terminal_snr() if zero_terminal_snr else schedule
