"""The networks and steps that scripts/bench.py times: ours and diffusers' at one configuration, same weights.

Ours are built first and copied into diffusers' classes through the converters (ldm_train/unet/layouts.py:
identical state-dict keys; ldm_train/autoencoder/layouts.py for the VAE), so both sides compute the same
function; `check_*` asserts that before anything is timed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
from torch import nn

from ldm_train.autoencoder import AutoencoderKL
from ldm_train.autoencoder.layouts import from_diffusers_state_dict, kwargs_from_diffusers_config
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.sampling.pipeline import GuidedSampler
from ldm_train.sampling.seeds import PerImageNoise
from ldm_train.speed import SpeedSettings, build_adamw, prepare_module, saved_activation_bytes
from ldm_train.unet import UNet, to_diffusers_config

LR = 1e-4  # AdamW learning rate of every timed step (its value does not change the cost)
KL_WEIGHT = 1e-6  # LDM's KL weight in the plain reconstruction step
GUIDANCE = 3.0  # classifier-free guidance scale of the sampling rows (ours: configs/stage/ldm.yaml)
SAMPLING_STEPS = 25
# Both samplers on the same grid (trailing spacing: where DPMSolverMultistepScheduler's grid equals ours,
# ldm_train/interop/scheduler.py) so that their images can be compared before timing.
SPACING = "trailing"
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
LATENT_CHANNELS = 4  # of every VAE and UNet here
LATENT_STD = 1 / 0.18215  # SD's kl-f8 latent scale; used for both sides at every size

SMALL_UNET = dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, attention_levels=[1, 2],
                  num_heads=None, num_head_channels=32, context_dim=384)  # configs/unet/small.yaml, MiniLM's 384
SD15_UNET = dict(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=2, attention_levels=[0, 1, 2],
                 num_heads=8, context_dim=768)  # configs/unet/sd15.yaml
SMALL_VAE = dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
KL_F8_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                 latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4)  # SD 1.x/2.x's VAE


@dataclass(frozen=True)
class BenchSize:
    """One benchmark configuration: networks, resolutions and batch sizes."""

    name: str
    unet: dict  # our UNet kwargs
    vae: dict  # diffusers AutoencoderKL kwargs (ours via kwargs_from_diffusers_config)
    image_size: int  # pixels; latents are image_size / VAE factor
    context_tokens: int  # text tokens of the context (MiniLM: 32, CLIP: 77)
    unet_batch: int
    vae_batch: int
    sample_batch: int  # images per sampling call

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae["block_out_channels"]) - 1)


SIZES = {
    "small": BenchSize("small", SMALL_UNET, SMALL_VAE, 32, 32, unet_batch=16, vae_batch=8, sample_batch=4),
    "sd256": BenchSize("sd256", SD15_UNET, KL_F8_VAE, 256, 77, unet_batch=16, vae_batch=4, sample_batch=4),
    "sd512": BenchSize("sd512", SD15_UNET, KL_F8_VAE, 512, 77, unet_batch=8, vae_batch=2, sample_batch=2),
}
TINY = BenchSize("tiny", dict(SMALL_UNET, model_channels=32, channel_mult=[1, 2], attention_levels=[1],
                              num_res_blocks=1), dict(SMALL_VAE, block_out_channels=(8, 16, 16), norm_num_groups=4),
                 32, 8, unet_batch=2, vae_batch=2, sample_batch=1)  # fmt: skip  # tests/test_bench.py


Step = Callable[[], object]


@dataclass
class Pair:
    """Ours and theirs, same weights: the UNets, the VAEs, on one device."""

    size: BenchSize
    device: torch.device
    unet: UNet | None
    their_unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    their_vae: DiffusersAutoencoderKL | None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def build_unets(size: BenchSize, seed: int = 0, device: torch.device | str = "cpu",
                side: str = "both") -> tuple[UNet, UNet2DConditionModel | None]:  # fmt: skip
    """Ours, and diffusers' with our weights (None for side "ours"). Built on `device` directly: initialising the
    SD UNet on the host costs seconds per network, which every memory child process and switch row would pay."""
    torch.manual_seed(seed)
    with torch.device(device):
        ours = UNet(**size.unet)
        for module in ours.modules():  # LDM's zero init makes the output 0: PyTorch's init, so the check means something
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any():
                module.reset_parameters()
        if side == "ours":
            return ours, None
        theirs = UNet2DConditionModel(**to_diffusers_config(ours.config))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def build_vaes(size: BenchSize, seed: int = 0,
               device: torch.device | str = "cpu") -> tuple[AutoencoderKL, DiffusersAutoencoderKL]:  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        theirs = DiffusersAutoencoderKL(**size.vae, sample_size=size.image_size, scaling_factor=1 / LATENT_STD)
        ours = AutoencoderKL(**kwargs_from_diffusers_config(theirs.config))
    state = from_diffusers_state_dict(theirs.state_dict())
    norm = {f"latent_norm.{k}": v for k, v in ours.latent_norm.state_dict().items()}
    ours.load_state_dict({**state, **norm}, strict=True)
    ours.latent_norm.set_from_statistics(LATENT_STD)
    return ours, theirs


def build_pair(size: BenchSize, device: torch.device, side: str = "both") -> Pair:
    """Both sides, or only "ours" / "theirs" kept (the other side's networks are None). Both are always built
    (ours gives theirs its weights), so a memory child process of either side holds the same freed memory."""
    unet, their_unet = build_unets(size, device=device)
    vae, their_vae = build_vaes(size, device=device)
    nets = [unet, their_unet, vae, their_vae]
    if side != "both":
        drop = 1 if side == "ours" else 0
        nets[drop] = nets[drop + 2] = None
    return _with_inputs(Pair(size, device, *nets))


def build_ours(size: BenchSize, device: torch.device) -> Pair:
    """Our networks only, diffusers' UNet never built: the switch rows, which time ours against ours."""
    unet, _ = build_unets(size, device=device, side="ours")
    vae, _ = build_vaes(size, device=device)
    return _with_inputs(Pair(size, device, unet, None, vae, None))


def _with_inputs(pair: Pair) -> Pair:
    """The benchmark batch of `pair.size` (seeded) on `pair.device`."""
    size = pair.size
    g = torch.Generator().manual_seed(1)
    latent = (size.unet_batch, LATENT_CHANNELS, size.latent_size, size.latent_size)
    pair.inputs = {
        "z": torch.randn(latent, generator=g),
        "noise": torch.randn(latent, generator=g),
        "t": torch.randint(0, 1000, (size.unet_batch,), generator=g),
        "context": torch.randn(size.unet_batch, size.context_tokens, size.unet["context_dim"], generator=g),
        "image": torch.rand(size.vae_batch, 3, size.image_size, size.image_size, generator=g) * 2 - 1,
    }
    pair.inputs = {k: v.to(pair.device) for k, v in pair.inputs.items()}
    return pair


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast for the bf16 rows, nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# -- parity: the same function before timing ---------------------------------------------------------
def check_unets(pair: Pair, atol: float = 1e-4) -> float:
    x, t, ctx = pair.inputs["z"], pair.inputs["t"], pair.inputs["context"]
    with torch.no_grad():
        ours, theirs = pair.unet(x, t, ctx), pair.their_unet(x, t, encoder_hidden_states=ctx).sample
    return _assert_close("UNet", ours, theirs, atol)


def check_vaes(pair: Pair, atol: float = 1e-4) -> float:
    x = pair.inputs["image"]
    with torch.no_grad():
        mean, their_mean = pair.vae.encode(x).mean, pair.their_vae.encode(x).latent_dist.mean
        _assert_close("VAE encoder", mean, their_mean, atol)
        return _assert_close("VAE decoder", pair.vae.decode(mean), pair.their_vae.decode(mean).sample, atol)


def _assert_close(what: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> float:
    error = (ours.float() - theirs.float()).abs().max().item()
    if not error <= atol * max(1.0, theirs.abs().max().item()):
        raise AssertionError(f"{what}: ours and diffusers' differ by {error:.3g} (> {atol}); not timing")
    return error


# -- (a) UNet training step ---------------------------------------------------------------------------
def unet_steps(pair: Pair, speed: SpeedSettings, dtype: torch.dtype) -> tuple[Step | None, Step | None]:
    """One training step each: forward, ε-MSE loss, backward, AdamW. Ours with `speed`, theirs as diffusers'
    train_text_to_image.py sets it up (torch's AdamW defaults, eager, contiguous). A side whose network is
    None (a memory child process holds one side) gets None."""
    x, t, ctx, noise = (pair.inputs[k] for k in ("z", "t", "context", "noise"))

    def make(net: Callable, opt: torch.optim.Optimizer, latents: torch.Tensor) -> Step:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(pair.device, dtype):
                out = net(latents)
            F.mse_loss(out.float(), noise).backward()
            opt.step()

        return step

    ours = theirs = None
    if pair.unet is not None:
        prepare_module(pair.unet, speed)
        x_ours = x.contiguous(memory_format=torch.channels_last) if speed.channels_last else x
        opt = build_adamw(pair.unet.parameters(), LR, speed)
        ours = make(lambda z: pair.unet(z, t, ctx), opt, x_ours)
    if pair.their_unet is not None:
        opt = torch.optim.AdamW(pair.their_unet.parameters(), lr=LR)
        theirs = make(lambda z: pair.their_unet(z, t, encoder_hidden_states=ctx).sample, opt, x)
    return ours, theirs


# -- (b) VAE training steps ----------------------------------------------------------------------------
def vae_plain_steps(pair: Pair, speed: SpeedSettings, dtype: torch.dtype) -> tuple[Step | None, Step | None]:
    """encode → posterior sample → decode, L1 + w·KL, backward, AdamW (the same plain step on both sides)."""
    x = pair.inputs["image"]
    ours = theirs = None
    if pair.vae is not None:
        prepare_module(pair.vae, speed)
        ours_opt = build_adamw(pair.vae.parameters(), LR, speed)
        x_ours = x.contiguous(memory_format=torch.channels_last) if speed.channels_last else x

        def ours() -> None:
            ours_opt.zero_grad(set_to_none=True)
            with autocast(pair.device, dtype):
                recon, posterior = pair.vae(x_ours)
            ((x - recon.float()).abs().mean() + KL_WEIGHT * posterior.kl().mean()).backward()
            ours_opt.step()

    if pair.their_vae is not None:
        their_opt = torch.optim.AdamW(pair.their_vae.parameters(), lr=LR)

        def theirs() -> None:
            their_opt.zero_grad(set_to_none=True)
            with autocast(pair.device, dtype):
                posterior = pair.their_vae.encode(x).latent_dist
                recon = pair.their_vae.decode(posterior.sample()).sample
            ((x - recon.float()).abs().mean() + KL_WEIGHT * posterior.kl().mean()).backward()
            their_opt.step()

    return ours, theirs


def vae_full_step(pair: Pair, speed: SpeedSettings, dtype: torch.dtype, perceptual: torch.nn.Module) -> Callable:
    """Our phase-1 step as AutoencoderModule runs it: L1 + LPIPS + KL + adaptive GAN loss, then the
    discriminator step (disc_start 0, so both optimizers run). diffusers has no phase-1 loss to compare with."""
    from ldm_train.autoencoder.losses import AutoencoderLoss
    from ldm_train.autoencoder.patchgan import NLayerDiscriminator

    weight = 1.0 if perceptual is not None else 0.0
    loss = AutoencoderLoss(NLayerDiscriminator(), perceptual, perceptual_weight=weight, disc_start=0).to(pair.device)
    opt_ae = build_adamw([*pair.vae.parameters(), *loss.generator_parameters()], LR, speed)
    opt_d = build_adamw(loss.discriminator_parameters(), LR, speed)
    x = pair.inputs["image"]

    def step() -> None:
        opt_ae.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        with autocast(pair.device, dtype):
            recon, posterior = pair.vae(x)
            g_loss, _ = loss.generator_loss(x, recon, posterior, 1, pair.vae.last_layer)
        g_loss.backward()
        with autocast(pair.device, dtype):
            d_loss, _ = loss.discriminator_loss(x, recon.detach(), 1)
        d_loss.backward()
        opt_ae.step()
        opt_d.step()

    return step


# -- (c) sampling -----------------------------------------------------------------------------------------
def sampling_runs(pair: Pair, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """25 DPM-Solver++(2M) steps with CFG, then the VAE decoder; both return B×3×H×W images.

    Theirs is StableDiffusionPipeline's denoising loop: cond and uncond in one batch per step."""
    size, device = pair.size, pair.device
    n = size.sample_batch
    seeds = list(range(n))
    shape = (LATENT_CHANNELS, size.latent_size, size.latent_size)
    ctx = pair.inputs["context"][:1].expand(n, -1, -1)
    uncond = torch.zeros_like(pair.inputs["context"][:1])
    schedule = NoiseSchedule.scaled_linear()
    sampler = GuidedSampler("dpmpp_2m", SAMPLING_STEPS, GUIDANCE, spacing=SPACING)
    scheduler = DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                            lower_order_final=True, timestep_spacing=SPACING)  # fmt: skip

    @torch.no_grad()
    def ours() -> torch.Tensor:
        with autocast(device, dtype):
            z = sampler(pair.unet, schedule, "eps", ctx, uncond, shape, seeds)
        return pair.vae.decode_latents(z.float())

    @torch.no_grad()
    def theirs() -> torch.Tensor:
        latents = PerImageNoise(seeds, shape, device=device).draw() * scheduler.init_noise_sigma
        scheduler.set_timesteps(SAMPLING_STEPS, device=device)
        both = torch.cat([uncond.expand(n, -1, -1), ctx])
        for t in scheduler.timesteps:
            latent_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            with autocast(device, dtype):
                pred = pair.their_unet(latent_in, t, encoder_hidden_states=both).sample.float()
            pred_uncond, pred_cond = pred.chunk(2)
            latents = scheduler.step(pred_uncond + GUIDANCE * (pred_cond - pred_uncond), t, latents).prev_sample
        return pair.their_vae.decode(latents / pair.their_vae.config.scaling_factor).sample

    return ours, theirs


# -- (e) activation memory: what autograd keeps for backward --------------------------------------------------
def unet_saved_activations(pair: Pair, dtype: torch.dtype) -> tuple[int, int | None]:
    """(ours, theirs): bytes saved for backward by one UNet forward of the training batch (theirs None when the
    pair holds only ours)."""
    x, t, ctx = pair.inputs["z"], pair.inputs["t"], pair.inputs["context"]
    theirs = None
    with autocast(pair.device, dtype):
        ours, _ = saved_activation_bytes(lambda: pair.unet(x, t, ctx), pair.unet.parameters())
        if pair.their_unet is not None:
            theirs, _ = saved_activation_bytes(lambda: pair.their_unet(x, t, encoder_hidden_states=ctx).sample,
                                               pair.their_unet.parameters())  # fmt: skip
    return ours, theirs


def vae_saved_activations(pair: Pair, dtype: torch.dtype) -> tuple[int, int]:
    """(ours, theirs): bytes saved for backward by one VAE forward (encode, posterior sample, decode)."""
    x = pair.inputs["image"]

    def theirs() -> torch.Tensor:
        return pair.their_vae.decode(pair.their_vae.encode(x).latent_dist.sample()).sample

    with autocast(pair.device, dtype):
        ours, _ = saved_activation_bytes(lambda: pair.vae(x)[0], pair.vae.parameters())
        return ours, saved_activation_bytes(theirs, pair.their_vae.parameters())[0]
