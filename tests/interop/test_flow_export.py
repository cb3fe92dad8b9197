"""A rectified-flow model exports to a diffusers folder with a flow scheduler, which draws our images.

The scheduler is DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), the flow
scheduler StableDiffusionPipeline can drive (scheduler.py); it builds our "trailing" flow grid and passes ⌊t·T⌋
to the UNet, hence spacing="trailing" and quantize_t=True on our side.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.interop import (
    SamplerSettings,
    export_diffusers,
    scheduler_config,
    text_to_image_from_diffusers,
)
from ldm_train.interop.scheduler import prediction_from_config, schedule_from_config

STEPS, GUIDANCE, TOL, SHIFT = 6, 3.0, 1e-4, 3.0


@pytest.fixture(scope="module")
def flow_pipe(tiny_pipe):
    from ldm_train.text_to_image import TextToImage

    # conftest's tiny model (random UNet and VAE, tiny CLIP), trained as if with diffusion=flow shift=3.
    return TextToImage(
        tiny_pipe.unet, tiny_pipe.text_encoder, tiny_pipe.first_stage, FlowSchedule(1000, SHIFT), "flow",
        tiny_pipe.latent_shape,
    )


@pytest.mark.parametrize("sampler,order", [("dpmpp_2m", 2), ("euler", 1)])
def test_flow_model_exports_a_flow_scheduler_that_samples_as_we_do(
    sampler, order, flow_pipe, tmp_path, sample_ours, sample_theirs
):
    settings = SamplerSettings(sampler, spacing="trailing")
    folder = export_diffusers(flow_pipe, tmp_path / sampler, settings)
    sd_pipe = StableDiffusionPipeline.from_pretrained(folder)
    config = sd_pipe.scheduler.config
    assert type(sd_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert config.use_flow_sigmas and config.prediction_type == "flow_prediction"
    assert config.flow_shift == SHIFT and config.solver_order == order

    mine = sample_ours(flow_pipe, settings, STEPS, GUIDANCE, quantize_t=True)
    torch.testing.assert_close(
        sample_theirs(sd_pipe, GUIDANCE, num_inference_steps=STEPS), mine, rtol=0, atol=TOL
    )
    # Our flow default (SD3's linspace grid, fractional timesteps) is another sampler: a different image.
    default = sample_ours(flow_pipe, SamplerSettings(sampler), STEPS, GUIDANCE)
    assert (default - mine).abs().max() > 10 * TOL

    # And the folder imports back as the same flow model.
    imported = text_to_image_from_diffusers(folder)
    assert isinstance(imported.schedule, FlowSchedule) and imported.schedule.shift == SHIFT
    assert imported.prediction == "flow"


@pytest.mark.parametrize(
    "settings,match",
    [
        (SamplerSettings("heun"), "euler"),
        (SamplerSettings("ddim"), "dpmpp_2m, euler"),
        (SamplerSettings("euler", karras=True), "VP models only"),
        (SamplerSettings("euler", spacing="leading"), "linspace, trailing"),
    ],
)
def test_unexportable_flow_settings_fail_naming_the_valid_ones(settings, match):
    with pytest.raises(ValueError, match=match):
        scheduler_config(FlowSchedule(), "flow", settings)


def test_flow_match_scheduler_configs_import_as_flow_schedules():
    """SD3-style folders store FlowMatchEulerDiscreteScheduler(shift=3.0), without a prediction_type."""
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    schedule = schedule_from_config(config)
    assert isinstance(schedule, FlowSchedule) and schedule.shift == 3.0 and schedule.num_timesteps == 1000
    assert prediction_from_config(config) == "flow"
    with pytest.raises(ValueError, match="dynamic"):
        schedule_from_config({**config, "use_dynamic_shifting": True})


def test_vp_settings_refuse_a_shift(tiny_pipe):
    with pytest.raises(ValueError, match="shift applies to rectified-flow"):
        scheduler_config(tiny_pipe.schedule, "eps", SamplerSettings(shift=3.0))


def test_sd_export_of_a_flow_model_records_the_objective(flow_pipe, tmp_path, caplog):
    from safetensors import safe_open

    from ldm_train.interop import export_sd

    out = export_sd(flow_pipe, tmp_path / "flow.safetensors", include_text_encoder=False)
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["ldm_train.prediction"] == "flow" and float(metadata["ldm_train.flow_shift"]) == SHIFT
    assert "rectified-flow" in caplog.text
