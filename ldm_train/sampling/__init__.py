"""Sampling: the network as a denoiser D(x, σ), classifier-free guidance, noise-level grids,
samplers of one signature, per-image seeds."""

from ldm_train.sampling.cfg import CFGDenoiser
from ldm_train.sampling.denoiser import Denoiser
from ldm_train.sampling.grid import karras_sigmas, make_sigmas, spaced_timesteps
from ldm_train.sampling.pipeline import GuidedSampler
from ldm_train.sampling.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from ldm_train.sampling.seeds import PerImageNoise, initial_latents

__all__ = [
    "SAMPLERS",
    "CFGDenoiser",
    "Denoiser",
    "GuidedSampler",
    "PerImageNoise",
    "get_sampler",
    "initial_latents",
    "karras_sigmas",
    "make_sigmas",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "spaced_timesteps",
]
