"""Guidance options: rescale (= diffusers' rescale_noise_cfg, in the network's output space), interval, autoguidance
(also through the pipeline: `LatentDiffusionPipeline.generate(guide_unet=...)`, `TextToImage.load_autoguide`)."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ldm_train.diffusion.flow import FlowSchedule
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling import (
    CFGDenoiser,
    Denoiser,
    FlowDenoiser,
    GuidedSampler,
    LatentDiffusionPipeline,
    PerImageNoise,
    get_sampler,
    initial_latents,
    make_sigmas,
    rescale_guidance,
)
from ldm_train.text_to_image import TextToImage

SEEDS = [3, 11]
SHAPE = (4, 8, 8)


def _contexts(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 5, 16, generator=g), torch.zeros(1, 5, 16)


def _scaled_by_context(model):
    """The prompt scales the output (instead of shifting it, which would leave every std unchanged): rescale bites."""

    def model_fn(x, t, context):
        return model(x, t, None) * (1 + context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1))

    return model_fn


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.7, 1.0])
def test_rescale_equals_diffusers_rescale_noise_cfg(phi):
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g) * 0.5
    guided = uncond + 7.5 * (cond - uncond)
    torch.testing.assert_close(rescale_guidance(guided, cond, phi), rescale_noise_cfg(guided, cond, phi))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_rescaled_cfg_trajectory_matches_the_diffusers_pipeline_loop(prediction, toy_unet):
    """StableDiffusionPipeline's loop: CFG on the network output, then rescale_noise_cfg(noise_pred, noise_text, φ),
    then EulerDiscreteScheduler.step — against GuidedSampler(guidance_rescale=φ)."""
    schedule, num_steps, scale, phi = NoiseSchedule.scaled_linear(), 12, 5.0, 0.7
    model = _scaled_by_context(toy_unet(schedule, prediction))
    context, uncond = _contexts()
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction],
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(num_steps)
    sigmas = make_sigmas(schedule, num_steps, spacing="trailing")
    x = initial_latents(PerImageNoise(SEEDS, SHAPE).draw(), sigmas[0])
    for t in scheduler.timesteps:
        both = scheduler.scale_model_input(torch.cat([x, x]), t)
        out_uncond, out_text = model(both, t, torch.cat([uncond.expand_as(context), context])).chunk(2)
        guided = out_uncond + scale * (out_text - out_uncond)
        x = scheduler.step(rescale_noise_cfg(guided, out_text, phi), t, x).prev_sample

    ours = GuidedSampler("euler", num_steps, scale, spacing="trailing", guidance_rescale=phi)(
        model, schedule, prediction, context, uncond, SHAPE, SEEDS
    )
    plain = GuidedSampler("euler", num_steps, scale, spacing="trailing")(
        model, schedule, prediction, context, uncond, SHAPE, SEEDS
    )
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    assert (plain - x).abs().max() > 1e-2, "the rescale should change the samples"


def test_rescale_acts_on_the_flow_velocity(toy_flow_net):
    model, (context, uncond) = _scaled_by_context(toy_flow_net()), _contexts()
    denoiser = FlowDenoiser(model, FlowSchedule())
    x, t = torch.randn(2, *SHAPE), torch.tensor(0.6)
    v_u, v_c = model(x, t * 1000, uncond.expand_as(context)), model(x, t * 1000, context)
    expected = x - t * rescale_noise_cfg(v_u + 4.0 * (v_c - v_u), v_c, 0.7)
    got = CFGDenoiser(denoiser, context, uncond, 4.0, rescale=0.7)(x, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - CFGDenoiser(denoiser, context, uncond, 4.0)(x, t)).abs().max() > 1e-2


@pytest.mark.parametrize("flow", [False, True])
def test_guidance_interval_guides_only_inside_it(flow, toy_unet, toy_flow_net):
    """Kynkäänniemi et al. (2024): D_cond outside (σ_lo, σ_hi] — the unconditional half is not even computed —
    and ordinary CFG inside. The interval is in VE σ; a flow model's t counts as σ = t/(1 − t)."""
    context, uncond = _contexts()
    if flow:
        model = toy_flow_net()
        denoiser = FlowDenoiser(model, FlowSchedule())
        levels = torch.tensor([0.95, 0.8, 0.5, 0.3, 0.1])  # σ_VE = 19, 4, 1, 0.43, 0.11
    else:
        model = toy_unet(NoiseSchedule.scaled_linear(), "v")
        denoiser = Denoiser(model, NoiseSchedule.scaled_linear(), "v")
        levels = torch.tensor([10.0, 4.0, 1.0, 0.43, 0.11])
    interval = (0.3, 4.0)
    x = torch.randn(2, *SHAPE)
    plain = CFGDenoiser(denoiser, context, uncond, 3.0)
    limited = CFGDenoiser(denoiser, context, uncond, 3.0, interval=interval)
    for level in levels:
        ve = float(denoiser.ve_sigma(level.double()))
        calls = len(model.calls) if hasattr(model, "calls") else len(model.timesteps)
        got = limited(x, level)
        inside = interval[0] < ve <= interval[1]
        expected = plain(x, level) if inside else denoiser(x, level, context)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        batches = model.calls[calls:] if hasattr(model, "calls") else [len(t) for t in model.timesteps[calls:]]
        assert batches[0] == (4 if inside else 2), f"σ = {ve:.3g}: batch {batches[0]}"


def test_autoguidance_is_the_weak_model_plus_w_times_the_difference(toy_unet):
    """Karras et al. (2024), eq. 2: D̃ = D_w + w·(D − D_w), both given the prompt."""
    schedule = NoiseSchedule.scaled_linear()
    strong, weak = toy_unet(schedule, "v", seed=0), toy_unet(schedule, "v", seed=1)
    context, _ = _contexts()
    d_strong, d_weak = Denoiser(strong, schedule, "v"), Denoiser(weak, schedule, "v")
    x, sigma, w = torch.randn(2, *SHAPE), torch.tensor(2.0), 2.5
    expected = d_weak(x, sigma, context) + w * (d_strong(x, sigma, context) - d_weak(x, sigma, context))
    torch.testing.assert_close(CFGDenoiser(d_strong, context, None, w, guide=d_weak)(x, sigma), expected)
    torch.testing.assert_close(
        CFGDenoiser(d_strong, context, None, 1.0, guide=d_weak)(x, sigma), d_strong(x, sigma, context)
    )

    # Through GuidedSampler: a whole trajectory with the combination written out by hand.
    sampler = GuidedSampler("dpmpp_2m", 8, w, spacing="trailing")
    ours = sampler(strong, schedule, "v", context, None, SHAPE, SEEDS, guide_fn=weak)
    sigmas = make_sigmas(schedule, 8, spacing="trailing")

    def by_hand(x, s):
        return d_weak(x, s, context) + w * (d_strong(x, s, context) - d_weak(x, s, context))

    x0 = initial_latents(PerImageNoise(SEEDS, SHAPE).draw(), sigmas[0])
    torch.testing.assert_close(ours, get_sampler("dpmpp_2m")(by_hand, x0, sigmas), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(guidance_interval=[2.0, 1.0]), "σ_lo < σ_hi"),
        (dict(guidance_interval=[1.0]), "interval"),
        (dict(guidance_rescale=1.5), r"\[0, 1\]"),
    ],
)
def test_bad_guidance_options_fail_at_construction(options, match):
    with pytest.raises(ValueError, match=match):
        GuidedSampler(**options)


class _TextStub(nn.Module):
    """Prompts -> B×5×16 contexts that depend on the prompt; records what it was asked to encode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def forward(self, prompts: list[str]) -> torch.Tensor:
        self.seen.append(prompts)
        return torch.stack([torch.full((5, 16), float(len(p)) / 10) for p in prompts])


class _DecoderStub(nn.Module):
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :3]


def test_generate_with_a_guide_unet_is_autoguidance(toy_unet):
    """LatentDiffusionPipeline.generate(guide_unet=...) samples D_w + w·(D − D_w) and never encodes the empty prompt."""
    schedule = NoiseSchedule.scaled_linear()
    strong, weak = toy_unet(schedule, "v", seed=0), toy_unet(schedule, "v", seed=1)
    text, prompts = _TextStub(), ["a bag", "a sneaker"]
    sampler = GuidedSampler("euler", 6, 2.0, spacing="trailing")
    pipeline = LatentDiffusionPipeline(strong, text, _DecoderStub(), schedule, "v", SHAPE)
    images = pipeline.generate(prompts, sampler, SEEDS, guide_unet=weak)
    assert text.seen == [prompts]
    latents = sampler(strong, schedule, "v", text(prompts), None, SHAPE, SEEDS, guide_fn=weak)
    torch.testing.assert_close(images, latents[:, :3].clamp(-1, 1))


def test_load_autoguide_takes_a_compatible_checkpoint_only(tmp_path):
    """TextToImage.load_autoguide: the UNet (EMA weights) of another run with the same latents, objective and text
    context; a checkpoint of another objective is refused."""
    unet_cfg = dict(_target_="ldm_train.unet.UNet", in_channels=4, out_channels=4, model_channels=16,
                    channel_mult=[1], num_res_blocks=1, attention_levels=[0], num_heads=2, norm_groups=8,
                    context_dim=16)
    guide = instantiate(OmegaConf.create(unet_cfg))
    flow = {"_target_": "ldm_train.diffusion.flow.FlowObjective",
            "schedule": {"_target_": "ldm_train.diffusion.flow.FlowSchedule"}}
    vp = {"_target_": "ldm_train.diffusion.objective.DiffusionObjective",
          "schedule": {"_target_": "ldm_train.diffusion.schedules.build_schedule"}}
    for name, diffusion in (("flow", flow), ("vp", vp)):
        torch.save({"hyper_parameters": {"config": {"unet": unet_cfg, "diffusion": diffusion}},
                    "state_dict": {f"ema.shadow.{k}": v for k, v in guide.state_dict().items()},
                    "latent_shape": list(SHAPE), "first_stage_source": None}, tmp_path / f"{name}.ckpt")
    pipe = TextToImage(instantiate(OmegaConf.create(unet_cfg)), _TextStub(), _DecoderStub(), FlowSchedule(), "flow",
                       SHAPE)
    loaded = pipe.load_autoguide(tmp_path / "flow.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), guide.state_dict().values()))
    with pytest.raises(ValueError, match="latent space, objective and text encoder"):
        pipe.load_autoguide(tmp_path / "vp.ckpt")


class _AutocastRecordingDecoder(nn.Module):
    """A VAE decoder stub that records whether bf16 autocast was on when it decoded, and the latents' dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, torch.dtype]] = []

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_autocast_enabled("cpu"), z.dtype))
        return z[:, :3]


def test_generate_decodes_in_fp32_under_bf16_autocast(toy_unet):
    """Lightning runs validation sampling inside the precision plugin's autocast: the UNet may run in bf16, the VAE
    decodes in fp32 (bf16/fp16 VAEs give NaNs and banding), as phase 2's encode does."""
    schedule = NoiseSchedule.scaled_linear()
    decoder = _AutocastRecordingDecoder()
    pipeline = LatentDiffusionPipeline(toy_unet(schedule, "v"), _TextStub(), decoder, schedule, "v", SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = pipeline.generate(["a bag", "a sneaker"], GuidedSampler("euler", 4, 2.0), SEEDS)
    assert decoder.calls == [(False, torch.float32)] and images.dtype == torch.float32
