"""Sampling: the network as a denoiser D(x, σ) (VP or rectified flow), guidance (CFG, interval, rescale,
autoguidance), noise-level grids, samplers of one signature, per-image seeds; the pipeline (prompts → images)."""

from ldm_train.sampling.cfg import CFGDenoiser, rescale_guidance
from ldm_train.sampling.denoiser import Denoiser, FlowDenoiser
from ldm_train.sampling.grid import flow_sigmas, karras_sigmas, make_sigmas, spaced_timesteps
from ldm_train.sampling.pipeline import GuidedSampler, LatentDiffusionPipeline
from ldm_train.sampling.samplers import (
    FLOW_SAMPLERS,
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_flow_dpmpp_2m,
    sample_heun,
)
from ldm_train.sampling.seeds import PerImageNoise, initial_latents

__all__ = [
    "FLOW_SAMPLERS",
    "SAMPLERS",
    "CFGDenoiser",
    "Denoiser",
    "FlowDenoiser",
    "GuidedSampler",
    "LatentDiffusionPipeline",
    "PerImageNoise",
    "flow_sigmas",
    "get_sampler",
    "initial_latents",
    "karras_sigmas",
    "make_sigmas",
    "rescale_guidance",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_flow_dpmpp_2m",
    "sample_heun",
    "spaced_timesteps",
]
