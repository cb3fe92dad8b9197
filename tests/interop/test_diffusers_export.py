"""export_diffusers: diffusers' own StableDiffusionPipeline, loaded from the exported folder, draws the same images
as our sampler for the same prompts, per-image seeds, steps and guidance scale.

Equal up to float rounding (1e-4 on [0, 1] images; measured ≈ 1e-6) for every exported sampler, with two
documented diffusers differences. First, DPMSolverMultistepScheduler builds its "leading" grid as
(N − i)·⌊T/(N+1)⌋ + 1 (N+1 points, t = 0 dropped) where ours, and diffusers' DDIM/Euler, use (N−1−i)·⌊T/N⌋ + 1.
For our default sampler (DPM-Solver++ 2M, leading) the pipeline therefore gets our grid through its
`timesteps=` argument (`diffusers_timesteps`); with spacing="trailing" the exported scheduler matches unaided.

Second, with final_sigma="sigma_min" (SD 1.x's DDIM `set_alpha_to_one=False`, DPM-Solver's
`final_sigmas_type="sigma_min"`): diffusers' VP-space schedulers end at the VP state x_t = √ᾱ_0·(x_0 + σ_min·ε)
and decode that, our samplers end at the VE state x_0 + σ_min·ε. The latents differ by exactly the factor
√ᾱ_0 = 1/√(1 + σ_min²) (1 − 4.2e-4 for SD's betas), which test_final_sigma_min_latents_differ_by_the_vp_scale
checks instead of the images.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from ldm_train.autoencoder import LatentNorm
from ldm_train.conditioning import CLIPTextEncoder
from ldm_train.diffusion import build_schedule
from ldm_train.interop import (
    SamplerSettings,
    diffusers_timesteps,
    export_diffusers,
    text_to_image_from_diffusers,
)
from ldm_train.sampling import GuidedSampler
from ldm_train.sampling.discrete import sampling_sigmas
from ldm_train.text_to_image import TextToImage

STEPS, GUIDANCE, TOL = 6, 3.0, 1e-4
PROMPTS, SEEDS = ["a photo of a bag", "a sneaker"], [3, 11]
# id -> (exported settings, our quantize_t): diffusers' DPM-Solver rounds its Karras timesteps to integers.
CASES = {
    "ddpm": (SamplerSettings("ddpm"), False),
    "ddim": (SamplerSettings("ddim"), False),
    "euler": (SamplerSettings("euler"), False),
    "euler_a": (SamplerSettings("euler_a"), False),
    "heun": (SamplerSettings("heun"), False),
    "dpmpp_2m-trailing": (SamplerSettings("dpmpp_2m", spacing="trailing"), False),
    "dpmpp_2m-karras": (SamplerSettings("dpmpp_2m", karras=True), True),
}


@pytest.fixture(scope="module")
def default_export(tiny_pipe, tmp_path_factory):
    return export_diffusers(tiny_pipe, tmp_path_factory.mktemp("export") / "default")


@pytest.fixture(scope="module")
def default_sd_pipe(default_export):
    return StableDiffusionPipeline.from_pretrained(default_export)


def load_reusing_text_parts(folder, loaded: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """from_pretrained(folder), with the text encoder + tokenizer of an export of the same model (the same files;
    loading CLIP's 49k-token vocabulary again would dominate the test time)."""
    return StableDiffusionPipeline.from_pretrained(
        folder, text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer
    )


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_samples_as_we_do(case, tiny_pipe, default_sd_pipe, tmp_path, sample_ours, sample_theirs):
    settings, quantize_t = CASES[case]
    sd_pipe = load_reusing_text_parts(export_diffusers(tiny_pipe, tmp_path / case, settings), default_sd_pipe)
    mine = sample_ours(tiny_pipe, settings, STEPS, GUIDANCE, quantize_t=quantize_t)
    torch.testing.assert_close(
        sample_theirs(sd_pipe, GUIDANCE, num_inference_steps=STEPS), mine, rtol=0, atol=TOL
    )


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_v_prediction_with_zero_terminal_snr(
    sampler, tiny_pipe, default_sd_pipe, pipe_factory, tmp_path, sample_ours, sample_theirs
):
    """Lin et al. (2024)'s setting: v-prediction, rescaled betas (`rescale_betas_zero_snr`), trailing spacing."""
    schedule = build_schedule("scaled_linear", zero_terminal_snr=True)
    pipe = pipe_factory(tiny_pipe.text_encoder, prediction="v", schedule=schedule)
    settings = SamplerSettings(sampler, spacing="trailing")
    sd_pipe = load_reusing_text_parts(export_diffusers(pipe, tmp_path / sampler, settings), default_sd_pipe)
    assert (
        sd_pipe.scheduler.config.rescale_betas_zero_snr
        and sd_pipe.scheduler.config.prediction_type == "v_prediction"
    )
    mine = sample_ours(pipe, settings, STEPS, GUIDANCE)
    torch.testing.assert_close(
        sample_theirs(sd_pipe, GUIDANCE, num_inference_steps=STEPS), mine, rtol=0, atol=TOL
    )


def test_default_export_is_our_default_sampler(default_sd_pipe, tiny_pipe, sample_ours, sample_theirs):
    sd_pipe = default_sd_pipe
    mine = sample_ours(tiny_pipe, SamplerSettings(), STEPS, GUIDANCE)
    grid = diffusers_timesteps(tiny_pipe.schedule, STEPS)
    torch.testing.assert_close(sample_theirs(sd_pipe, GUIDANCE, timesteps=grid), mine, rtol=0, atol=TOL)
    # The documented difference: DPM-Solver's own leading grid is another one (a different image).
    sd_pipe.scheduler.set_timesteps(STEPS)
    assert sd_pipe.scheduler.timesteps.tolist() != grid
    unaided = sample_theirs(sd_pipe, GUIDANCE, num_inference_steps=STEPS)
    assert (unaided - mine).abs().max() > 10 * TOL


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings("ddim", final_sigma="sigma_min"),
        SamplerSettings("dpmpp_2m", "trailing", final_sigma="sigma_min"),
    ],
    ids=["ddim-sd1", "dpmpp_2m"],
)
def test_final_sigma_min_latents_differ_by_the_vp_scale(
    settings, tiny_pipe, default_sd_pipe, tmp_path, sample_theirs
):
    sd_pipe = load_reusing_text_parts(
        export_diffusers(tiny_pipe, tmp_path / "out", settings), default_sd_pipe
    )
    context, uncond = tiny_pipe.text_encoder(PROMPTS), tiny_pipe.text_encoder([""])
    sampler = GuidedSampler(num_steps=STEPS, guidance_scale=GUIDANCE, **asdict(settings))
    ve_latents = sampler(
        tiny_pipe.unet, tiny_pipe.schedule, "eps", context, uncond, tiny_pipe.latent_shape, SEEDS
    )
    sigma_min = sampling_sigmas(tiny_pipe.schedule)[0].item()
    vp_latents = sample_theirs(
        sd_pipe, GUIDANCE, PROMPTS, SEEDS, num_inference_steps=STEPS, output_type="latent"
    )
    torch.testing.assert_close(vp_latents, ve_latents / (1 + sigma_min**2) ** 0.5, rtol=0, atol=TOL)
    assert (vp_latents - ve_latents).abs().max() > 10 * TOL, "the factor is visible at this tolerance"


def test_images_depend_on_prompt_and_guidance(tiny_pipe, sample_ours):
    """The model is random but not degenerate: a wrong context or guidance would fail the parity tests."""
    settings = SamplerSettings("euler")
    base = sample_ours(tiny_pipe, settings, STEPS, GUIDANCE)
    other_prompt = sample_ours(tiny_pipe, settings, STEPS, GUIDANCE, prompts=["a sneaker", "a sneaker"])
    assert (base[0] - other_prompt[0]).abs().max() > 100 * TOL
    assert (base - sample_ours(tiny_pipe, settings, STEPS, 1.0)).abs().max() > 100 * TOL


def test_folder_layout(default_export, tiny_pipe):
    index = json.loads((default_export / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    scheduler = json.loads((default_export / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler"
    expected = dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
        use_karras_sigmas=False,
    )
    assert {k: scheduler[k] for k in expected} == expected
    assert json.loads((default_export / "vae" / "config.json").read_text())["scaling_factor"] == 0.5
    unet = load_file(default_export / "unet" / "diffusion_pytorch_model.safetensors")
    ours = tiny_pipe.unet.state_dict()
    assert unet.keys() == ours.keys() and all(torch.equal(unet[k], ours[k]) for k in ours)
    assert json.loads((default_export / "unet" / "config.json").read_text())["sample_size"] == 8
    assert (
        json.loads((default_export / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
        == 77
    )


@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_clip_context_equals_ours(layer, clip_dir, pipe_factory, tmp_path):
    """The pipeline's encode_prompt (no attention mask, no clip_skip) gives our context, for SD 1.x's last layer
    and for SD 2.x's penultimate one (exported as the model without its last block, as SD 2.x folders are)."""
    encoder = CLIPTextEncoder(pretrained=str(clip_dir), layer=layer)
    sd_pipe = StableDiffusionPipeline.from_pretrained(
        export_diffusers(pipe_factory(encoder), tmp_path / layer)
    )
    expected_layers = encoder.model.config.num_hidden_layers - (layer == "penultimate")
    assert sd_pipe.text_encoder.config.num_hidden_layers == expected_layers
    cond, uncond = sd_pipe.encode_prompt(["a photo of a bag", "x"], "cpu", 1, True)
    torch.testing.assert_close(cond, encoder(["a photo of a bag", "x"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(uncond, encoder(["", ""]), rtol=0, atol=1e-6)


def test_minilm_encoder_exports_with_attention_mask(
    minilm_encoder, pipe_factory, tmp_path, sample_ours, sample_theirs
):
    """A BERT-style encoder attends with the padding mask; the export sets `use_attention_mask` so the pipeline
    passes it too, and the tokenizer's model_max_length to our max_length."""
    pipe = pipe_factory(minilm_encoder)
    settings = SamplerSettings("euler")
    folder = export_diffusers(pipe, tmp_path / "minilm", settings)
    sd_pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert sd_pipe.text_encoder.config.use_attention_mask is True
    assert sd_pipe.tokenizer.model_max_length == minilm_encoder.max_length
    mine = sample_ours(pipe, settings, STEPS, GUIDANCE)
    torch.testing.assert_close(
        sample_theirs(sd_pipe, GUIDANCE, num_inference_steps=STEPS), mine, rtol=0, atol=TOL
    )
    with pytest.raises(ValueError, match="only CLIPTextModel pipelines"):
        text_to_image_from_diffusers(folder)


@pytest.mark.parametrize(
    "scale,shift,message",
    [([0.5, 0.4, 0.5, 0.5], 0.0, "scales each channel differently"), (0.5, 0.1, "has a shift")],
)
def test_latent_norms_sd_cannot_express_are_refused(scale, shift, message, tiny_pipe, tmp_path):
    vae = type(tiny_pipe.first_stage)(**tiny_pipe.first_stage.config)
    vae.latent_norm = LatentNorm(4, scale=scale, shift=shift)
    pipe = TextToImage(tiny_pipe.unet, tiny_pipe.text_encoder, vae, tiny_pipe.schedule, "eps", (4, 8, 8))
    with pytest.raises(ValueError, match=message):
        export_diffusers(pipe, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [], "nothing is written for a refused export"


def test_existing_folder_is_replaced_only_with_overwrite(tiny_pipe, tmp_path):
    out = export_diffusers(tiny_pipe, tmp_path / "model", SamplerSettings("euler"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_diffusers(tiny_pipe, out)
    export_diffusers(tiny_pipe, out, SamplerSettings("ddim"), overwrite=True)
    assert (
        json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        == "DDIMScheduler"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no temporary folders are left behind"


def test_import_diffusers_folder_as_text_to_image(default_export, tiny_pipe, sample_ours):
    imported = text_to_image_from_diffusers(default_export)
    assert imported.latent_shape == tiny_pipe.latent_shape and imported.prediction == "eps"
    torch.testing.assert_close(imported.schedule.betas, tiny_pipe.schedule.betas, rtol=1e-12, atol=0)
    assert imported.first_stage.latent_norm.scale.tolist() == [0.5] * 4
    settings = SamplerSettings()
    torch.testing.assert_close(
        sample_ours(imported, settings, STEPS, GUIDANCE),
        sample_ours(tiny_pipe, settings, STEPS, GUIDANCE),
        rtol=0,
        atol=1e-6,
    )
