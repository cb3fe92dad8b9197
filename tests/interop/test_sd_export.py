"""export_sd: one original-layout checkpoint whose tensors load back into our modules unchanged, and which
diffusers' own single-file converter (`from_single_file`) reads into a pipeline that samples as we do."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel

from ldm_train.autoencoder import AutoencoderKL, load_autoencoder_init
from ldm_train.interop import SamplerSettings, export_diffusers, export_sd
from ldm_train.interop.text_encoder import clip_from_sd
from ldm_train.unet import load_sd_unet

PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")


@pytest.fixture(scope="module")
def sd_file(tiny_pipe, tmp_path_factory):
    return export_sd(tiny_pipe, tmp_path_factory.mktemp("sd") / "model.safetensors")


def test_keys_metadata_and_nothing_left_behind(sd_file, tiny_pipe):
    state = load_file(sd_file)
    counts = {p: sum(k.startswith(p) for k in state) for p in PREFIXES}
    assert counts == {
        PREFIXES[0]: len(tiny_pipe.unet.state_dict()),
        PREFIXES[1]: len(tiny_pipe.first_stage.state_dict()) - 2,  # latent_norm.{scale,shift} -> metadata
        PREFIXES[2]: len(tiny_pipe.text_encoder.model.state_dict()),
    }
    assert sum(counts.values()) == len(state)
    assert (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" not in state
    )  # level 0
    assert "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight" in state
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in state
    with safe_open(sd_file, "pt") as f:
        metadata = f.metadata()
    assert float(metadata["ldm_train.scale_factor"]) == 0.5 and metadata["ldm_train.prediction"] == "eps"
    assert json.loads(metadata["ldm_train.unet_config"]) == tiny_pipe.unet.config
    assert metadata["ldm_train.text_layer"] == "last"
    assert [p.name for p in sd_file.parent.iterdir()] == ["model.safetensors"]


@torch.no_grad()
def test_tensors_load_back_into_our_modules(sd_file, tiny_pipe):
    unet = load_sd_unet(sd_file, tiny_pipe.unet.config).eval()  # sd_to_ours, strict
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, 32)
    assert torch.equal(unet(x, t, context), tiny_pipe.unet(x, t, context))

    vae = AutoencoderKL(**tiny_pipe.first_stage.config)
    with safe_open(sd_file, "pt") as f:
        scale_factor = float(f.metadata()["ldm_train.scale_factor"])
    vae.latent_norm.set_from_statistics(1 / scale_factor)  # SD files keep the scale outside the tensors
    load_autoencoder_init(vae, sd_file).eval()  # first_stage_model. prefix found, from_sd_state_dict, strict
    z = torch.randn(2, 4, 8, 8)
    assert torch.equal(vae.decode_latents(z), tiny_pipe.first_stage.decode_latents(z))

    clip = CLIPTextModel(tiny_pipe.text_encoder.model.config).eval()
    clip.load_state_dict(clip_from_sd(load_file(sd_file), clip), strict=True)
    ids = tiny_pipe.text_encoder.tokenize(["a photo of a bag"])["input_ids"]
    assert torch.equal(clip(ids).last_hidden_state, tiny_pipe.text_encoder.model(ids).last_hidden_state)


def test_diffusers_single_file_loader_samples_as_we_do(
    sd_file, tiny_pipe, pipe_factory, tmp_path, sample_ours, sample_theirs
):
    """`config=` supplies only the component configs (SD 1.5's would not fit the tiny model); the weights come from
    our file — the config folder holds a differently seeded model of the same shape."""
    settings = SamplerSettings("euler")
    other = pipe_factory(tiny_pipe.text_encoder, seed=1)
    config_dir = export_diffusers(other, tmp_path / "config", settings)
    sd_pipe = StableDiffusionPipeline.from_single_file(
        str(sd_file), config=str(config_dir), local_files_only=True
    )
    mine = sample_ours(tiny_pipe, settings, 4, 3.0)
    torch.testing.assert_close(sample_theirs(sd_pipe, 3.0, num_inference_steps=4), mine, rtol=0, atol=1e-4)
    assert (sample_ours(other, settings, 4, 3.0) - mine).abs().max() > 1e-2


def test_bad_requests_fail_before_writing(tiny_pipe, minilm_encoder, pipe_factory, tmp_path, sd_file):
    with pytest.raises(ValueError, match="give the output path that suffix"):
        export_sd(tiny_pipe, tmp_path / "model.ckpt")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_sd(tiny_pipe, sd_file)
    minilm_pipe = pipe_factory(minilm_encoder)
    with pytest.raises(ValueError, match="include_text_encoder=False"):
        export_sd(minilm_pipe, tmp_path / "minilm.safetensors")
    assert list(tmp_path.iterdir()) == []
    state = load_file(export_sd(minilm_pipe, tmp_path / "minilm.safetensors", include_text_encoder=False))
    assert not any(k.startswith("cond_stage_model.") for k in state)
