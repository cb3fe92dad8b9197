"""UNet behaviour: shapes, LDM zero init, parameter counts of the SD configs, gradient checkpointing, errors."""

import pytest
import torch

from ldm_train.unet import UNet

SD15_PARAMS = 859_520_964  # published SD 1.x UNet size
SD2_PARAMS = 865_910_724  # published SD 2.x UNet size


def tiny(**overrides) -> UNet:
    kwargs = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                  num_heads=2, context_dim=32, norm_groups=8)  # fmt: skip
    return UNet(**{**kwargs, **overrides})


def test_forward_shape_and_zero_initial_output(inputs):
    x, t, context = inputs
    unet = tiny(out_channels=3)
    out = unet(x, t, context)
    assert out.shape == (2, 3, 8, 8)
    # zero_module on conv_out: an untrained network predicts 0; the other zeroed layers make blocks identities.
    assert torch.count_nonzero(out) == 0
    for name, p in unet.named_parameters():
        if name.endswith(("conv2.weight", "proj_out.weight")) or name.startswith("conv_out"):
            assert torch.count_nonzero(p) == 0, name


def test_sd_configs_have_the_published_sizes(sd_unets_on_meta):
    sd15, sd2 = sd_unets_on_meta
    assert sum(p.numel() for p in sd15.parameters()) == SD15_PARAMS
    assert sum(p.numel() for p in sd2.parameters()) == SD2_PARAMS


def test_gradient_checkpointing_gives_the_same_gradients(inputs, randomize):
    x, t, context = inputs
    grads = []
    for checkpointing in (False, True):
        unet = randomize(tiny(gradient_checkpointing=checkpointing, dropout=0.1), seed=3)
        torch.manual_seed(0)  # same dropout masks; checkpoint() replays the RNG state on recompute
        unet(x, t, context).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_context_conditions_the_output(inputs, randomize):
    x, t, context = inputs
    unet = randomize(tiny()).eval()
    with torch.no_grad():
        assert not torch.allclose(unet(x, t, context), unet(x, t, torch.zeros_like(context)))
        assert not torch.allclose(unet(x, t, context), unet(x, t + 100, context))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(attention_levels=(2,)), "attention_levels"),
        (dict(num_heads=None), "exactly one"),
        (dict(num_heads=2, num_head_channels=8), "exactly one"),
        (dict(model_channels=12), "divisible"),
    ],
)
def test_bad_construction_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_bad_inputs_are_named(inputs):
    x, t, context = inputs
    unet = tiny()
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(x[..., :7], t, context)
    with pytest.raises(ValueError, match="one per sample"):
        unet(x, torch.tensor([1, 2, 3]), context)
    with pytest.raises(ValueError, match="text context"):
        unet(x, t, None)
    with pytest.raises(ValueError, match="context_dim"):
        unet(x, t, context[..., :16])
