"""Each speed switch (ldm_train/speed.py, README "Speed switches"): it takes effect (NHWC weights, the optimizer's
kernel, fewer stored activations, an fp32 VAE under autocast), and the loss after a few steps with and without it
agrees within a stated tolerance (tiny networks, CPU); the gradient norm is computed once per step, and a compiled
UNet compiles once per batch shape, not per step."""

from __future__ import annotations

import functools
from collections.abc import Callable

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.losses import AutoencoderLoss
from ldm_train.autoencoder.patchgan import NLayerDiscriminator
from ldm_train.conditioning import CLIPTextEncoder, write_tiny_clip
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.lit.autoencoder import AutoencoderModule
from ldm_train.lit.latent_diffusion import LatentDiffusionModule
from ldm_train.speed import SpeedSettings, build_adamw, full_precision, saved_activation_bytes
from ldm_train.unet import UNet
from tests.helpers import compose_config

STEPS = 3
CPU = torch.device("cpu")
LR = 1e-3
EXACT = 1e-5  # relative: the same arithmetic in another order (memory format, optimizer kernels, recompute)
COMPILED = 1e-4  # relative: inductor fuses and reorders float32 operations
BF16 = 5e-2  # relative: bf16 autocast keeps ~3 significant digits per matmul/conv
FP32_ENCODE = 1e-6  # absolute: the VAE's latents under autocast vs without it (the same fp32 arithmetic)
# Checkpointed blocks keep only their inputs for backward: the tiny networks save 0.15 (UNet) and 0.19 (VAE) of the
# activation bytes they save without it; at most this fraction passes.
CHECKPOINTED_SAVED_FRACTION = 0.25  # bytes of activations saved with checkpointing, at most, of those without
BATCH = {"image": torch.linspace(-1, 1, 4 * 3 * 32 * 32).reshape(4, 3, 32, 32).sin(),
         "caption": ["a photo of a bag", "a sneaker", "", "a photo of a bag"]}  # fmt: skip


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_tiny_clip(folder)
    return CLIPTextEncoder(pretrained=str(folder))


def tiny_unet(gradient_checkpointing: bool = False) -> UNet:
    unet = UNet(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=4,
                norm_groups=8, context_dim=32, gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    for m in unet.modules():  # the zero-initialised output layers would hide differences in the first step
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return unet


def tiny_vae(gradient_checkpointing: bool = False) -> AutoencoderKL:
    return AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=32, norm_groups=4,
                         gradient_checkpointing=gradient_checkpointing)  # fmt: skip


def make_module(text_encoder, optimizer="for_loop", gradient_checkpointing=False, **switches) -> LatentDiffusionModule:
    torch.manual_seed(0)
    unet = tiny_unet(gradient_checkpointing)
    vae = tiny_vae()
    return LatentDiffusionModule(unet, vae, text_encoder, DiffusionObjective(NoiseSchedule.scaled_linear()),
                                 optimizer=functools.partial(build_adamw, lr=LR, settings=SpeedSettings(adamw=optimizer)),
                                 cond_drop_prob=0.0, ema_decay=None, **switches)  # fmt: skip


def losses_after_steps(
    module: LatentDiffusionModule, autocast: bool = False, device: torch.device = CPU
) -> list[float]:
    """STEPS optimizer steps on one batch; timesteps and noise from the same seed in every run."""
    optimizer = module.configure_optimizers()
    module.train()
    batch = {**BATCH, "image": BATCH["image"].to(device)}
    losses = []
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            z, context = module.encode(batch)
            if module.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            loss = module.objective.loss(module.unet, z, context)[0].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def reference(text_encoder) -> list[float]:
    return losses_after_steps(make_module(text_encoder))


@pytest.mark.parametrize(
    "options",
    [{"channels_last": True}, {"optimizer": "fused"}, {"optimizer": "foreach"}, {"gradient_checkpointing": True}],
    ids=["channels_last", "adamw_fused", "adamw_foreach", "gradient_checkpointing"],
)
def test_switch_keeps_the_losses(text_encoder, reference, options):
    losses = losses_after_steps(make_module(text_encoder, **options))
    assert losses == pytest.approx(reference, rel=EXACT)
    assert reference[-1] != pytest.approx(reference[0], rel=1e-3)  # the steps did change the model


def conv_weights(net: nn.Module) -> list[torch.Tensor]:
    """The k×k (k > 1) convolution weights: a 1×1 kernel's is NCHW- and NHWC-contiguous at once."""
    return [m.weight for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]


def nhwc(tensors: list[torch.Tensor]) -> set[bool]:
    return {x.is_contiguous(memory_format=torch.channels_last) for x in tensors}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_makes_the_unet_weights_and_its_input_nhwc(text_encoder, channels_last):
    module = make_module(text_encoder, channels_last=channels_last)
    losses_after_steps(module)  # the layout survives optimizer steps
    assert conv_weights(module.unet) and nhwc(conv_weights(module.unet)) == {channels_last}
    inputs = []
    module.unet.register_forward_pre_hook(lambda net, args: inputs.append(args[0]))
    module.train().training_step(BATCH, 0)  # (no Trainer: its logging is skipped)
    assert len(inputs) == 1 and inputs[0].dim() == 4 and nhwc(inputs) == {channels_last}


@pytest.mark.parametrize(("implementation", "expected"), [
    ("fused", {"fused": True, "foreach": None}), ("foreach", {"fused": None, "foreach": True}),
    ("for_loop", {"fused": None, "foreach": False})])  # fmt: skip
def test_adamw_implementation_reaches_the_optimizer(text_encoder, implementation, expected):
    optimizer = make_module(text_encoder, optimizer=implementation).configure_optimizers()
    assert [{k: group[k] for k in expected} for group in optimizer.param_groups] == [expected]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("stage", ["autoencoder", "ldm"])
def test_optim_fused_flag_reaches_every_optimizer_of_the_stage(stage, fused, tmp_path):
    overrides = [f"stage={stage}", f"optim.fused={str(fused).lower()}", *(["text_encoder=minilm"] if stage == "ldm" else [])]
    module_cfg = compose_config(overrides, tmp_path).module
    names = ("optimizer", "disc_optimizer") if stage == "autoencoder" else ("optimizer",)
    for name in names:
        optimizer = instantiate(module_cfg[name])([nn.Parameter(torch.zeros(2))])
        assert optimizer.param_groups[0]["fused"] is fused, name


@pytest.mark.parametrize("network", ["unet", "autoencoder"])
def test_gradient_checkpointing_recomputes_instead_of_storing(network):
    z, t, context = torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), torch.randn(2, 7, 32)

    def run(net: nn.Module) -> torch.Tensor:  # B×4×8×8 noise prediction or B×3×32×32 reconstruction
        return net(z, t, context) if network == "unet" else net(BATCH["image"], sample=False)[0]

    runs = []
    for enabled in (False, True):
        torch.manual_seed(0)
        net = tiny_unet(enabled) if network == "unet" else tiny_vae(enabled)
        saved, out = saved_activation_bytes(functools.partial(run, net), net.parameters())
        out.square().mean().backward()
        runs.append((saved, out.detach(), [p.grad for p in net.parameters()]))
    (plain, out_plain, grads_plain), (checkpointed, out_checkpointed, grads_checkpointed) = runs
    assert checkpointed <= CHECKPOINTED_SAVED_FRACTION * plain
    torch.testing.assert_close(out_checkpointed, out_plain, rtol=EXACT, atol=0)
    for a, b in zip(grads_checkpointed, grads_plain):
        torch.testing.assert_close(a, b, rtol=EXACT, atol=1e-8)


def test_bf16_autocast_encodes_through_the_module_in_fp32(text_encoder):
    """The module's own encode (not the helper alone): latents under bf16 autocast are the fp32 ones."""
    module = make_module(text_encoder).eval()  # eval: no caption dropout; the posterior sample is seeded
    torch.manual_seed(0)
    z_fp32, _ = module.encode(BATCH)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_autocast, _ = module.encode(BATCH)
    assert z_autocast.dtype == torch.float32
    torch.testing.assert_close(z_autocast, z_fp32, rtol=0, atol=FP32_ENCODE)


def test_bf16_autocast_keeps_the_losses_and_the_vae_in_fp32(text_encoder, reference):
    module = make_module(text_encoder)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_autocast = module.first_stage.encode_latents(BATCH["image"], sample=False)
        with full_precision("cpu"):
            z_fp32 = module.first_stage.encode_latents(BATCH["image"], sample=False)
    assert z_fp32.dtype == torch.float32
    torch.testing.assert_close(z_fp32, module.first_stage.encode_latents(BATCH["image"], sample=False))
    assert (z_autocast.float() - z_fp32).abs().max() > 0  # bf16 would have changed the latents
    assert losses_after_steps(module, autocast=True) == pytest.approx(reference, rel=BF16)


def test_compile_wraps_the_training_unet_in_place(text_encoder):
    """Cheap on CPU: nothing is compiled before the first call. The losses are compared by the GPU test
    (inductor needs ~5 minutes on a 2-core CPU for the tiny UNet's forward and backward)."""
    module = make_module(text_encoder, compile=True)
    assert module.unet._compiled_call_impl is not None
    assert module.ema is None or module.ema.shadow._compiled_call_impl is None
    assert set(module.unet.state_dict()) == set(make_module(text_encoder).unet.state_dict())  # no _orig_mod.


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_compiled_unet_compiles_once_for_steps_of_one_shape(text_encoder, monkeypatch):
    """prepare_module's settings (dynamic=False) with a backend that counts the graphs it is given (inductor would
    take minutes on this CPU): later training steps of the first step's shape compile nothing (new timesteps,
    noise and weights are values, not shapes); a smaller last batch compiles once more, then both are cached."""
    graphs = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(graph)
        return graph.forward

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: compile_(*args, **{**kwargs, "backend": counting_backend}))
    torch._dynamo.reset()
    module = make_module(text_encoder, compile=True).train()
    optimizer = module.configure_optimizers()

    def graphs_after_step(batch_size: int) -> int:
        batch = {"image": BATCH["image"][:batch_size], "caption": BATCH["caption"][:batch_size]}
        module.training_step(batch, 0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(graphs)

    try:
        first = graphs_after_step(4)
        assert first >= 1  # it did compile
        assert [graphs_after_step(4) for _ in range(STEPS)] == [first] * STEPS
        partial = graphs_after_step(3)
        assert partial == 2 * first  # the same graphs once more, for the new batch size
        assert [graphs_after_step(4), graphs_after_step(3)] == [partial, partial]
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{"compile": True}, {"channels_last": True, "compile": True}],
                         ids=["compile", "channels_last+compile"])  # fmt: skip
def test_compile_keeps_the_losses_on_gpu(text_encoder, options):
    device = torch.device("cuda")
    reference = losses_after_steps(make_module(text_encoder).to(device), device=device)
    losses = losses_after_steps(make_module(text_encoder, **options).to(device), device=device)
    assert losses == pytest.approx(reference, rel=COMPILED)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_and_channels_last_keep_the_losses_on_gpu(text_encoder):
    device = torch.device("cuda")
    reference = losses_after_steps(make_module(text_encoder).to(device), device=device)
    losses = losses_after_steps(make_module(text_encoder, channels_last=True).to(device), device=device)
    assert losses == pytest.approx(reference, rel=1e-4)  # cuDNN picks other kernels for NHWC
    bf16 = losses_after_steps(make_module(text_encoder, channels_last=True).to(device), True, device)
    assert bf16 == pytest.approx(reference, rel=BF16)


class _Batches(torch.utils.data.IterableDataset):
    def __iter__(self):
        for _ in range(STEPS):
            yield BATCH


def _fit(module: LatentDiffusionModule, tmp_path) -> None:
    trainer = L.Trainer(max_steps=STEPS, gradient_clip_val=0.01, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(module, torch.utils.data.DataLoader(_Batches(), batch_size=None))


def test_gradient_norm_is_computed_once_and_clips_as_lightning_does(text_encoder, tmp_path, monkeypatch):
    ours = make_module(text_encoder)
    calls = []
    original = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or original(*a, **k))
    _fit(ours, tmp_path / "ours")
    assert calls == []  # Lightning's clipping (a second norm) never ran
    lightning = make_module(text_encoder)
    monkeypatch.setattr(lightning, "configure_gradient_clipping",
                        functools.partial(L.LightningModule.configure_gradient_clipping, lightning))  # fmt: skip
    _fit(lightning, tmp_path / "lightning")
    assert len(calls) == STEPS  # the reference did clip with Lightning's norm, once per step
    for a, b in zip(ours.unet.parameters(), lightning.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=EXACT, atol=1e-7)


def phase1_module(channels_last: bool = False, gradient_checkpointing: bool = False) -> AutoencoderModule:
    torch.manual_seed(0)
    loss = AutoencoderLoss(NLayerDiscriminator(ndf=8, n_layers=2), None, perceptual_weight=0.0, disc_start=0)
    optimizer = functools.partial(build_adamw, lr=LR, settings=SpeedSettings())
    return AutoencoderModule(tiny_vae(gradient_checkpointing), loss, optimizer, optimizer,
                             channels_last=channels_last).train()  # fmt: skip


def phase1_losses(module: AutoencoderModule) -> list[float]:
    """STEPS phase-1 steps (generator loss with the adaptive GAN weight, then the discriminator step)."""
    opt_ae, opt_d = module.configure_optimizers()
    x = BATCH["image"].contiguous(memory_format=torch.channels_last) if module.channels_last else BATCH["image"]
    losses = []
    for step in range(STEPS):
        torch.manual_seed(200 + step)
        recon, posterior = module.autoencoder(x)
        g_loss, _ = module.loss.generator_loss(x, recon, posterior, step + 1, module.autoencoder.last_layer)
        g_loss.backward()
        d_loss, _ = module.loss.discriminator_loss(x, recon.detach(), step + 1)
        d_loss.backward()
        for opt in (opt_ae, opt_d):
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses += [g_loss.item(), d_loss.item()]
    return losses


@pytest.mark.parametrize("switch", ["channels_last", "gradient_checkpointing"])
def test_phase1_switch_keeps_both_losses(switch):
    reference = phase1_losses(phase1_module())
    assert phase1_losses(phase1_module(**{switch: True})) == pytest.approx(reference, rel=EXACT)


def test_phase1_channels_last_makes_the_autoencoder_and_discriminator_weights_nhwc():
    module = phase1_module(channels_last=True)
    phase1_losses(module)
    for net in (module.autoencoder, module.loss.discriminator):
        assert conv_weights(net) and nhwc(conv_weights(net)) == {True}
    assert nhwc(conv_weights(phase1_module().autoencoder)) == {False}


@pytest.mark.parametrize("cache_size", [0, 2])
def test_text_cache_smaller_than_a_batch_still_encodes_every_caption(text_encoder, cache_size):
    module = make_module(text_encoder, text_cache_size=cache_size)
    captions = ["a photo of a bag", "a sneaker", "a coat", "", "a sneaker"]
    contexts = module.encode_text(captions)
    torch.testing.assert_close(contexts, text_encoder(captions))
    assert len(module._text_cache) == cache_size
