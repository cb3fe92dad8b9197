"""Noise schedules <-> diffusers scheduler configs, and the sampler settings that have no diffusers equivalent."""

from __future__ import annotations

import diffusers
import pytest
import torch

from ldm_train.diffusion.schedules import NoiseSchedule, build_schedule
from ldm_train.interop.scheduler import (
    SamplerSettings,
    betas_config,
    diffusers_timesteps,
    prediction_from_config,
    schedule_from_config,
    scheduler_config,
)

SCHEDULES = {
    "sd": NoiseSchedule.scaled_linear(),
    "ddpm-linear": NoiseSchedule.linear(),
    "cosine": NoiseSchedule.cosine(),
    "sd-zero-snr": build_schedule("scaled_linear", zero_terminal_snr=True),
    "custom": NoiseSchedule(torch.linspace(1e-3, 0.05, 50, dtype=torch.float64) ** 1.5),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_round_trips_and_diffusers_rebuilds_it(name):
    schedule = SCHEDULES[name]
    config = betas_config(schedule)
    assert ("trained_betas" in config) == (name == "custom"), "named schedules are written by name"
    torch.testing.assert_close(schedule_from_config(config).betas, schedule.betas, rtol=1e-12, atol=0)
    scheduler = diffusers.DDIMScheduler.from_config({**config, "prediction_type": "v_prediction"})
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, rtol=1e-5, atol=1e-7
    )


def test_sd_schedule_is_written_as_sd_writes_it():
    config = betas_config(SCHEDULES["sd"])
    assert config == dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=False,
    )


@pytest.mark.parametrize("ours,theirs", [("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")])
def test_prediction_names(ours, theirs):
    _, config = scheduler_config(SCHEDULES["sd"], ours)
    assert config["prediction_type"] == theirs and prediction_from_config(config) == ours


def test_sampler_options_map_to_scheduler_options():
    name, ddim = scheduler_config(SCHEDULES["sd"], "eps", SamplerSettings("ddim", final_sigma="sigma_min"))
    assert name == "DDIMScheduler" and ddim["set_alpha_to_one"] is False and ddim["clip_sample"] is False
    name, euler = scheduler_config(SCHEDULES["sd"], "eps", SamplerSettings("euler", karras=True))
    # Our Karras grid spans the whole schedule, as diffusers' Euler does only for linspace spacing.
    assert (
        name == "EulerDiscreteScheduler"
        and euler["use_karras_sigmas"]
        and euler["timestep_spacing"] == "linspace"
    )


@pytest.mark.parametrize(
    "settings,schedule,message",
    [
        (SamplerSettings("plms"), "sd", "unknown sampler"),
        (SamplerSettings("ddim", karras=True), "sd", "no diffusers Karras grid"),
        (SamplerSettings("euler_a", final_sigma="sigma_min"), "sd", "always ends at σ = 0"),
        (SamplerSettings("euler", spacing="uniform"), "sd", "'leading', 'linspace' or 'trailing'"),
        (SamplerSettings("heun"), "sd-zero-snr", "cannot sample a zero-terminal-SNR schedule"),
        (SamplerSettings(steps_offset=50), "custom", "lower steps_offset"),  # T = 50
    ],
)
def test_settings_without_a_diffusers_equivalent_are_refused(settings, schedule, message):
    with pytest.raises(ValueError, match=message):
        scheduler_config(SCHEDULES[schedule], "v", settings)


def test_our_grid_for_the_dpm_solver():
    assert diffusers_timesteps(SCHEDULES["sd"], 4) == [751, 501, 251, 1]
    with pytest.raises(ValueError, match="fractional timesteps"):
        diffusers_timesteps(SCHEDULES["sd"], 7, spacing="linspace")
