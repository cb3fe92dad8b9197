"""Rectified flow: training targets, timestep densities and shift against diffusers' SD3 training recipe."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from ldm_train.diffusion import FlowObjective, FlowSchedule, sample_flow_time, shift_time

T = 1000
DENSITIES = [
    ("uniform", {}),
    ("logit_normal", dict(logit_mean=0.0, logit_std=1.0)),
    ("logit_normal", dict(logit_mean=0.5, logit_std=0.7)),
    ("mode", dict(mode_scale=1.29)),
]


def _data(seed: int = 0, batch: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g)


def _diffusers_u(kind: str, batch: int, seed: int, options: dict) -> torch.Tensor:
    return compute_density_for_timestep_sampling(
        kind,
        batch,
        logit_mean=options.get("logit_mean"),
        logit_std=options.get("logit_std"),
        mode_scale=options.get("mode_scale"),
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("kind,options", DENSITIES)
def test_u_draws_equal_compute_density_for_timestep_sampling(kind, options):
    ours = sample_flow_time(kind, 64, "cpu", generator=torch.Generator().manual_seed(7), **options)
    torch.testing.assert_close(ours, _diffusers_u(kind, 64, 7, options), rtol=0, atol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_shift_equals_flow_match_scheduler_sigmas(shift):
    """FlowMatchEulerDiscreteScheduler.__init__: sigmas = shift(t/T) for t = T..1 — the table SD3 scripts index."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    table = torch.arange(T, 0, -1, dtype=torch.float32) / T
    torch.testing.assert_close(shift_time(table, shift), scheduler.sigmas, rtol=1e-6, atol=1e-7)
    # The shift is a bijection of [0, 1] whose inverse is the shift by 1/s.
    torch.testing.assert_close(shift_time(shift_time(table, shift), 1 / shift), table, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "sigma_sqrt", "cosmap"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_loss_at_matches_the_diffusers_sd3_training_recipe(weighting, shift):
    """train_dreambooth_sd3.py: u -> index -> σ from the shifted table; x_t = (1 − σ)·x_0 + σ·ε; target ε − x_0;
    loss = mean(compute_loss_weighting_for_sd3(σ)·(v̂ − target)²) per sample."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    u = _diffusers_u("logit_normal", 6, 3, dict(logit_mean=0.0, logit_std=1.0))
    indices = (u * T).long()
    sigmas = scheduler.sigmas[indices]
    x0, noise = _data(1)
    context = torch.randn(6, 7, 16)
    seen = {}

    def model(x_t, timesteps, ctx):
        seen.setdefault("x_t", x_t)
        seen.setdefault("timesteps", timesteps)
        return torch.tanh(x_t * 0.7) + ctx.mean() + timesteps.view(-1, 1, 1, 1) / T

    s = sigmas.view(-1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    weights = compute_loss_weighting_for_sd3(weighting, sigmas=s)
    expected = (weights * (model(noisy, scheduler.timesteps[indices], context) - (noise - x0)) ** 2).flatten(1).mean(1)
    seen.clear()

    objective = FlowObjective(FlowSchedule(T, shift), weighting=weighting)
    ours = objective.loss_at(model, x0, context, scheduler.timesteps[indices], noise)
    torch.testing.assert_close(seen["x_t"], noisy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["timesteps"], scheduler.timesteps[indices], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("kind,options", DENSITIES)
def test_training_noise_levels_have_the_sd3_script_distribution(kind, options, shift):
    """Our t = shift(u) against the scripts' σ = shift(1 − ⌊u·T⌋/T): equal in distribution up to the 1/T grid,
    with the logit-normal mean mirrored (their u indexes a descending table)."""
    n = 200_000
    objective = FlowObjective(FlowSchedule(T, shift), timestep_sampling=kind, **options)
    ours = objective.loss(lambda x, t, c: x, torch.zeros(n, 1), None, torch.Generator().manual_seed(0))[1] / T
    mirrored = {**options, "logit_mean": -options["logit_mean"]} if "logit_mean" in options else options
    u = _diffusers_u(kind, n, 1, mirrored)
    theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift).sigmas[(u * T).long()]
    quantiles = torch.linspace(0.001, 0.999, 999)
    gap = (ours.quantile(quantiles) - theirs.quantile(quantiles)).abs().max()
    assert gap < 0.01, f"quantiles differ by up to {gap:.4f}"


def test_logit_normal_density_is_sd3s():
    """SD3 §3.1: π_ln(t; m, s) has CDF Φ((logit t − m)/s); after the shift, CDF(shift⁻¹(t))."""
    m, s, shift, n = 0.3, 0.8, 3.0, 200_000
    objective = FlowObjective(FlowSchedule(T, shift), timestep_sampling="logit_normal", logit_mean=m, logit_std=s)
    t = objective.loss(lambda x, t, c: x, torch.zeros(n, 1), None, torch.Generator().manual_seed(2))[1].double() / T
    grid = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    u = shift_time(grid, 1 / shift)
    cdf = 0.5 * (1 + torch.erf((torch.logit(u) - m) / (s * math.sqrt(2))))
    empirical = (t.view(-1, 1) <= grid.view(1, -1)).double().mean(0)
    assert (empirical - cdf).abs().max() < 0.005  # Kolmogorov–Smirnov: ~1.63/√n at the 1% level


def test_a_perfect_model_has_zero_loss_and_timesteps_span_the_scale():
    objective = FlowObjective(FlowSchedule(T, 3.0), timestep_sampling="uniform", weighting="cosmap")
    x0, noise = _data()
    t = torch.tensor([0, 1, 300, 600, 999, 1000])
    assert objective.loss_at(lambda x, ts, c: noise - x0, x0, None, t, noise).abs().max() < 1e-12
    _, drawn = objective.loss(lambda x, ts, c: x, x0, None, torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.float32 and 0 <= drawn.min() and drawn.max() <= T


def test_loss_is_reproducible_from_the_generator():
    objective = FlowObjective(FlowSchedule(), offset_noise=0.1)
    x0, _ = _data()
    first = objective.loss(lambda x, t, c: x, x0, None, torch.Generator().manual_seed(5))
    again = objective.loss(lambda x, t, c: x, x0, None, torch.Generator().manual_seed(5))
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(timestep_sampling="log_normal"), "uniform, logit_normal, mode"),
        (dict(weighting="min_snr"), "uniform, sigma_sqrt, cosmap"),
        (dict(logit_std=0.0), "logit_std"),
        (dict(timestep_sampling="mode", mode_scale=3.0), "mode_scale"),
        (dict(offset_noise=-1.0), "offset"),
    ],
)
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowObjective(FlowSchedule(), **kwargs)


def test_bad_schedule_and_timesteps_fail():
    with pytest.raises(ValueError, match="shift"):
        FlowSchedule(shift=0.0)
    x0, noise = _data()
    with pytest.raises(ValueError, match=r"\[0, 1000\]"):
        FlowObjective(FlowSchedule()).loss_at(lambda x, t, c: x, x0, None, torch.full((6,), 1001), noise)
