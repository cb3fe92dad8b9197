"""scripts/export.py on a phase-2 checkpoint as training writes it: the EMA weights are what gets exported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_train.autoencoder.export import export_autoencoder
from ldm_train.unet import ours_to_sd

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "export.py"


@pytest.fixture(scope="module")
def export_script():
    spec = importlib.util.spec_from_file_location("export_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass annotations are resolved through the module registry
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def run_dir(tiny_pipe, clip_dir, tmp_path_factory):
    """A phase-2 run directory: checkpoints/last.ckpt with the resolved config, raw + EMA UNet weights, the VAE
    export it was trained on and the latent shape (the keys TextToImage.from_checkpoint reads)."""
    run = tmp_path_factory.mktemp("run")
    vae_path = export_autoencoder(tiny_pipe.first_stage, run / "first_stage")
    ema = tiny_pipe.unet.state_dict()
    config = {
        "unet": {"_target_": "ldm_train.unet.UNet", **tiny_pipe.unet.config},
        "text_encoder": {
            "_target_": "ldm_train.conditioning.clip_text.CLIPTextEncoder",
            "pretrained": str(clip_dir),
        },
        "diffusion": {
            "_target_": "ldm_train.diffusion.objective.DiffusionObjective",
            "schedule": {"_target_": "ldm_train.diffusion.schedules.build_schedule", "kind": "scaled_linear"},
            "prediction": "eps",
        },
    }
    checkpoint = {
        "hyper_parameters": {"config": config},
        "state_dict": {
            **{f"unet.{k}": torch.zeros_like(v) for k, v in ema.items()},
            **{f"ema.shadow.{k}": v for k, v in ema.items()},
        },
        "first_stage_source": str(vae_path),
        "latent_shape": tiny_pipe.latent_shape,
    }
    (run / "checkpoints").mkdir()
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    return run


def test_diffusers_export_holds_the_ema_weights(export_script, run_dir, tiny_pipe, tmp_path):
    out = tmp_path / "diffusers"
    assert (
        export_script.main([f"ckpt={run_dir}", "format=diffusers", f"out={out}", "scheduler.sampler=euler"])
        == 0
    )
    unet = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet[k], v) for k, v in tiny_pipe.unet.state_dict().items())
    assert '"EulerDiscreteScheduler"' in (out / "scheduler" / "scheduler_config.json").read_text()


def test_sd_export_of_the_latest_run(export_script, run_dir, tiny_pipe, tmp_path):
    runs = tmp_path / "outputs" / "ldm" / "2026-01-01"
    runs.mkdir(parents=True)
    (runs / "00-00-00").symlink_to(run_dir)
    out = tmp_path / "model.safetensors"
    argv = ["ckpt=latest", f"log_dir={tmp_path / 'outputs'}", "format=sd", f"out={out}"]
    assert export_script.main(argv) == 0
    state = load_file(out)
    expected = ours_to_sd(tiny_pipe.unet.state_dict(), tiny_pipe.unet.config)
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ckpt=x", "fromat=sd", "out=y"], "Key 'fromat' not in 'ExportArgs'"),
        (
            ["ckpt=x", "format=sd", "out=y", "scheduler.sampeler=euler"],
            "Key 'sampeler' not in 'SamplerSettings'",
        ),
        (["ckpt=x", "format=onnx", "out=y"], "use format=diffusers or format=sd"),
        (["ckpt=x", "format=sd"], "missing mandatory value: out"),
        (
            ["ckpt=x", "format=diffusers", "out=y", "scheduler.sampler=heun", "scheduler.karras=true"],
            "Karras",
        ),
    ],
)
def test_bad_arguments_are_named_before_loading(export_script, argv, message):
    with pytest.raises(SystemExit, match=message):
        export_script.main(argv)
