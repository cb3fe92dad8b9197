"""Rectified-flow sampling: trajectories against diffusers' flow schedulers, and what a flow model refuses.

  - euler     FlowMatchEulerDiscreteScheduler(shift)            spacing linspace (SD3's grid), fractional t·T
  - heun      FlowMatchHeunDiscreteScheduler(shift)             spacing linspace; the step to t = 0 is Euler
  - dpmpp_2m  DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift, prediction_type="flow_prediction",
              algorithm_type="dpmsolver++", solver_order=2)     spacing trailing (its grid), quantize_t=True (it
              passes ⌊t·T⌋ to the network)
Both loops start from the same noise; states are compared after every step (all O(1) on the flow path).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import FlowDenoiser, GuidedSampler, PerImageNoise, flow_sigmas, get_sampler

T = 1000
SEEDS = [3, 11]
SHAPE = (4, 8, 8)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _diffusers_trajectory(scheduler, model, x: torch.Tensor, num_steps: int) -> list[torch.Tensor]:
    states = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(model(model_input, t), t, x).prev_sample
        states.append(x)
    if len(states) == 2 * num_steps - 1:  # Heun: the second-order stages and the final Euler step
        states = states[1::2] + states[-1:]
    assert len(states) == num_steps
    return states


CASES = [
    ("euler", "linspace", False, lambda shift: FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)),
    ("heun", "linspace", False, lambda shift: FlowMatchHeunDiscreteScheduler(num_train_timesteps=T, shift=shift)),
    (
        "dpmpp_2m",
        "trailing",
        True,
        lambda shift: DPMSolverMultistepScheduler(
            num_train_timesteps=T,
            use_flow_sigmas=True,
            flow_shift=shift,
            prediction_type="flow_prediction",
            algorithm_type="dpmsolver++",
            solver_order=2,
        ),
    ),
]


@pytest.mark.parametrize("num_steps", [1, 4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_flow_trajectory_matches_diffusers(case, shift, num_steps, toy_flow_net):
    name, spacing, quantize_t, make_scheduler = case
    scheduler = make_scheduler(shift)
    scheduler.set_timesteps(num_steps)
    sigmas = flow_sigmas(T, num_steps, shift, spacing)
    reference_sigmas = scheduler.sigmas
    if name == "heun":  # FlowMatchHeun repeats the inner levels
        reference_sigmas = torch.cat([reference_sigmas[:1], reference_sigmas[1:-1:2], reference_sigmas[-1:]])
    torch.testing.assert_close(sigmas, reference_sigmas, rtol=1e-6, atol=1e-7)

    x_start = PerImageNoise(SEEDS, SHAPE).draw()
    model = toy_flow_net()
    theirs = _diffusers_trajectory(scheduler, model, x_start, num_steps)
    their_timesteps, model.timesteps = model.timesteps, []

    ours = []
    denoiser = FlowDenoiser(model, FlowSchedule(T, shift), quantize_t=quantize_t)
    final = get_sampler(name, flow=True)(denoiser, x_start, sigmas, callback=lambda i, x, d: ours.append(x))
    ours = ours[1:] + [final]

    assert final.abs().max() < 10, "the toy model should give O(1) samples"
    for mine, ref in zip(model.timesteps, their_timesteps):  # the network saw the same timesteps
        torch.testing.assert_close(mine, ref.float().expand_as(mine), rtol=1e-6, atol=1e-3)
    for step, (mine, ref) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(mine, ref, **TOLERANCE, msg=lambda m, step=step: f"step {step}: {m}")


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler_a"])
def test_vp_only_samplers_refuse_a_flow_model_naming_the_valid_ones(name, toy_flow_net):
    with pytest.raises(ValueError, match="euler, heun, dpmpp_2m"):
        get_sampler(name, flow=True)
    sampler = GuidedSampler(sampler=name, num_steps=4, guidance_scale=1.0)
    with pytest.raises(ValueError, match=f"{name}.*rectified-flow.*euler, heun, dpmpp_2m"):
        sampler(toy_flow_net(), FlowSchedule(), "flow", torch.zeros(1, 2, 3), None, SHAPE, [0])


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(spacing="leading"), "linspace, trailing"),
        (dict(karras=True), "VP models only"),
        (dict(final_sigma="sigma_min"), "VP models only"),
    ],
)
def test_vp_only_grid_options_refuse_a_flow_model(options, match):
    sampler = GuidedSampler(sampler="euler", num_steps=4, **options)
    with pytest.raises(ValueError, match=match):
        sampler.check(FlowSchedule())


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_guided_sampler_samples_a_flow_model(name, toy_flow_net):
    """GuidedSampler = flow grid (the model's shift unless overridden) + FlowDenoiser + the flow sampler, from noise."""
    schedule = FlowSchedule(T, shift=3.0)
    context = torch.randn(2, 3, 8)
    model = toy_flow_net()
    latents = GuidedSampler(sampler=name, num_steps=6, guidance_scale=1.0)(
        model, schedule, "flow", context, None, SHAPE, SEEDS
    )
    sigmas = flow_sigmas(T, 6, 3.0, "linspace")
    denoiser = FlowDenoiser(model, schedule)
    expected = get_sampler(name, flow=True)(
        lambda x, s: denoiser(x, s, context), PerImageNoise(SEEDS, SHAPE).draw(), sigmas
    )
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    unshifted = GuidedSampler(sampler=name, num_steps=6, guidance_scale=1.0, shift=1.0)(
        model, schedule, "flow", context, None, SHAPE, SEEDS
    )
    assert (unshifted - latents).abs().max() > 1e-3


def test_shift_is_refused_for_a_vp_model():
    with pytest.raises(ValueError, match="shift applies to rectified-flow"):
        GuidedSampler(shift=3.0).check(NoiseSchedule.scaled_linear())
