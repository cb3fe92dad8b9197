"""The VAE's parameters carry diffusers' AutoencoderKL names; checkpoints and exports written with ldm_train's
earlier names (fixtures/legacy_autoencoder.safetensors, made by the code of commit a0511ec) still load, with the
same outputs, and a resumed optimizer's state follows its parameters."""

import functools
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ldm_train.autoencoder import AutoencoderKL, load_autoencoder_init
from ldm_train.autoencoder.layouts import (
    from_legacy_state_dict,
    legacy_parameter_positions,
    to_diffusers_state_dict,
)
from ldm_train.autoencoder.losses import AutoencoderLoss
from ldm_train.autoencoder.patchgan import NLayerDiscriminator
from ldm_train.interop.vae import diffusers_vae_config
from ldm_train.lit.autoencoder import AutoencoderModule

TOL = 1e-5  # float rounding; a misplaced tensor would move outputs by orders of magnitude more
FIXTURE = Path(__file__).parent / "fixtures" / "legacy_autoencoder.safetensors"


def _fixture() -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    with safe_open(FIXTURE, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(FIXTURE)
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return metadata, model_state, tensors


def _outputs(model: AutoencoderKL, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = model.eval().encode(x).mode()
        return z, model.decode(z)


def test_a_legacy_state_dict_loads_strictly_with_the_same_outputs(tmp_path):
    metadata, state, tensors = _fixture()
    assert any(k.startswith("encoder.down.0.blocks.") for k in state)  # really the old names
    model = AutoencoderKL(**json.loads(metadata["config"]))
    model.load_state_dict(state, strict=True)  # an old export, or Lightning restoring an old checkpoint
    z, recon = _outputs(model, tensors["input"])
    # Equal up to float rounding (the fixture was computed with another thread count).
    torch.testing.assert_close(z, tensors["latent_mode"], atol=TOL, rtol=TOL)
    torch.testing.assert_close(recon, tensors["reconstruction"], atol=TOL, rtol=TOL)

    save_file(state, tmp_path / "old.safetensors")  # module.init_from=<an old file>
    fresh = load_autoencoder_init(AutoencoderKL(**json.loads(metadata["config"])), tmp_path / "old.safetensors")
    torch.testing.assert_close(_outputs(fresh, tensors["input"])[1], tensors["reconstruction"], atol=TOL, rtol=TOL)


def test_our_parameter_names_are_diffusers_names():
    metadata, state, _ = _fixture()
    ours = AutoencoderKL(**json.loads(metadata["config"]))
    theirs = DiffusersAutoencoderKL(**diffusers_vae_config(ours))
    assert set(to_diffusers_state_dict(ours.state_dict())) == set(theirs.state_dict())
    assert set(from_legacy_state_dict(state)) == set(ours.state_dict())


def test_a_resumed_optimizer_state_follows_the_renamed_parameters():
    metadata, state, _ = _fixture()
    old_order = json.loads(metadata["parameter_order"])
    autoencoder = AutoencoderKL(**json.loads(metadata["config"]))
    new_names = [name for name, _ in autoencoder.named_parameters()]
    positions = legacy_parameter_positions(json.loads(metadata["state_dict_order"]), new_names)
    assert sorted(positions) == list(range(len(new_names))) and positions != sorted(positions)  # a reordering
    renamed = list(from_legacy_state_dict(dict.fromkeys(old_order)))
    assert [new_names[p] for p in positions] == renamed

    loss = AutoencoderLoss(NLayerDiscriminator(ndf=8, n_layers=2, norm="none"), perceptual=None, perceptual_weight=0.0)
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    module = AutoencoderModule(autoencoder, loss, optimizer=adam, disc_optimizer=adam)
    # Adam state as the old code saved it: the i-th entry belongs to the i-th parameter in the old order, and the
    # learned logvar comes last.
    shapes = [state[name].shape for name in old_order] + [loss.logvar.shape]
    checkpoint = {
        # in the old module's order, as Lightning saved it (a safetensors file keeps no order)
        "state_dict": {f"autoencoder.{k}": state[k] for k in json.loads(metadata["state_dict_order"])},
        "optimizer_states": [{"state": {i: {"exp_avg": torch.full(s, float(i))} for i, s in enumerate(shapes)}},
                             {"state": {}}],
    }
    module.on_load_checkpoint(checkpoint)
    moved = checkpoint["optimizer_states"][0]["state"]
    parameters = [*autoencoder.parameters(), loss.logvar]
    assert sorted(moved) == list(range(len(parameters)))
    for index, parameter in enumerate(parameters):
        assert moved[index]["exp_avg"].shape == parameter.shape, index
    assert float(moved[len(parameters) - 1]["exp_avg"]) == len(parameters) - 1  # logvar stays last
