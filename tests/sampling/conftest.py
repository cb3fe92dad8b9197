"""Shared fixtures for the sampler tests: tiny deterministic "networks" (VP and flow) and diffusers' loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldm_train.diffusion.schedules import NoiseSchedule

DATA_STD = 0.8


class ToyUNet(nn.Module):
    """A fixed function of (x_t, t, context): the exact posterior mean for N(0, DATA_STD²) data,
    plus a nonlinear, t-dependent conv term (so the samplers' details matter), returned as ε, v
    or x_0. ᾱ is interpolated linearly in t, so fractional timesteps are fine."""

    def __init__(self, schedule: NoiseSchedule, prediction: str, channels: int = 4, seed: int = 0):
        super().__init__()
        self.alphas_cumprod = schedule.alphas_cumprod
        self.prediction = prediction
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        self.calls: list[int] = []  # batch size of every call

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        low = t.floor().long().clamp(max=len(self.alphas_cumprod) - 2)
        alpha_bar = torch.lerp(self.alphas_cumprod[low], self.alphas_cumprod[low + 1], t - low)
        alpha_bar = alpha_bar.float().view(-1, 1, 1, 1)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0 = alpha * DATA_STD**2 * x / (alpha_bar * DATA_STD**2 + 1 - alpha_bar)
        x0 = x0 + 0.1 * torch.tanh(self.conv(x)) * (1 + 0.5 * torch.sin(t.float() / 150)).view(-1, 1, 1, 1)
        if context is not None:
            x0 = x0 + 0.3 * context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        eps = (x - alpha * x0) / sigma
        return {"eps": eps, "v": alpha * eps - sigma * x0, "x0": x0}[self.prediction]


@pytest.fixture
def toy_unet():
    return ToyUNet


FLOW_T = 1000  # the flow models' timestep scale (FlowSchedule.num_timesteps)


class ToyFlowNet(nn.Module):
    """A fixed function (x_t, t·T, context) -> v̂: the exact velocity E[ε − x_0 | x_t] for N(0, DATA_STD²) data,
    plus a nonlinear, t-dependent conv term (so that the samplers' details matter)."""

    def __init__(self, channels: int = 4, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        self.timesteps: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, dtype=torch.float32).expand(x.shape[0])
        self.timesteps.append(timestep)
        t = (timestep / FLOW_T).view(-1, 1, 1, 1)
        variance = (1 - t) ** 2 * DATA_STD**2 + t**2
        velocity = (t - (1 - t) * DATA_STD**2) * x / variance  # E[ε | x_t] − E[x_0 | x_t]
        velocity = velocity + 0.1 * torch.tanh(self.conv(x)) * (1 + 0.5 * torch.sin(timestep / 150)).view(-1, 1, 1, 1)
        if context is not None:
            velocity = velocity + 0.3 * context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return velocity


@pytest.fixture
def toy_flow_net():
    return ToyFlowNet


def run_diffusers(
    scheduler, model, x_start: torch.Tensor, num_steps: int, generators=None, **step_kwargs
) -> list[torch.Tensor]:
    """diffusers' pipeline loop from the given start state (its own sample space: VP for
    DDPM/DDIM/DPM-Solver, VE for the Euler family). Returns the state after each outer step."""
    states = []
    x = x_start
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        if generators is not None:
            step_kwargs["generator"] = generators
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
        states.append(x)
    if len(states) == 2 * num_steps - 1:  # Heun: keep the second-order stages and the final Euler step
        states = states[1::2] + states[-1:]
    assert len(states) == num_steps
    return states


def diffusers_sigmas(scheduler) -> torch.Tensor:
    """The N+1 VE noise levels a configured diffusers scheduler steps through."""
    if hasattr(scheduler, "final_alpha_cumprod") or not hasattr(scheduler, "sigmas"):  # DDIM, DDPM
        final = getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))
        alpha_bar = torch.cat([scheduler.alphas_cumprod[scheduler.timesteps], final.view(1)])
        return ((1 - alpha_bar) / alpha_bar).sqrt()
    sigmas = scheduler.sigmas
    if len(sigmas) == 2 * len(scheduler.timesteps.unique()):  # Heun repeats the inner levels
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    return sigmas


@pytest.fixture
def diffusers_loop():
    return run_diffusers


@pytest.fixture
def diffusers_grid():
    return diffusers_sigmas
