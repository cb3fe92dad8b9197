"""Diffusion math: noise schedules, ε/v/x_0 parameterisation, loss weighting, timestep and noise
sampling, and the training objectives that combine them (discrete-time VP, rectified flow). The UNet
never sees any of it."""

from ldm_train.diffusion.flow import FlowObjective, FlowSchedule, sample_flow_time, shift_time
from ldm_train.diffusion.noise import sample_noise
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.diffusion.parameterization import Prediction, q_sample, regression_target, x0_and_eps
from ldm_train.diffusion.schedules import NoiseSchedule, build_schedule
from ldm_train.diffusion.timesteps import sample_timesteps
from ldm_train.diffusion.weighting import loss_weight

__all__ = [
    "DiffusionObjective",
    "FlowObjective",
    "FlowSchedule",
    "NoiseSchedule",
    "Prediction",
    "build_schedule",
    "loss_weight",
    "q_sample",
    "regression_target",
    "sample_flow_time",
    "sample_noise",
    "sample_timesteps",
    "shift_time",
    "x0_and_eps",
]
