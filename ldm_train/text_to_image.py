"""Prompt → image for users: a phase-2 run or checkpoint loaded onto a device.

`TextToImage` is the `LatentDiffusionPipeline` (sampling/pipeline.py) of a checkpoint, the object training samples
with too, plus the sampler settings of a call and batching by explicit seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from ldm_train.autoencoder.export import load_first_stage
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.runs import find_checkpoint, first_stage_path
from ldm_train.sampling.pipeline import GuidedSampler, LatentDiffusionPipeline, SamplerName

log = logging.getLogger(__name__)


def _load_unet(path: str | Path, log_dir: str | Path) -> tuple[nn.Module, Any, DictConfig, dict, Path]:
    """(UNet with its EMA weights when there are any, objective, config, checkpoint, its path) of a phase-2
    run or `.ckpt`."""
    ckpt_path = find_checkpoint(path, stage="ldm", log_dir=log_dir)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain data only
    cfg = OmegaConf.create(checkpoint["hyper_parameters"]["config"])
    unet = instantiate(cfg.unet)
    state = checkpoint["state_dict"]
    prefix = "ema.shadow." if any(k.startswith("ema.shadow.") for k in state) else "unet."
    unet.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    log.info("Loaded %s (%s weights)", ckpt_path, "EMA" if prefix.startswith("ema") else "raw")
    return unet, instantiate(cfg.diffusion), cfg, checkpoint, ckpt_path


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """B×3×H×W in [-1, 1] → PIL RGB images."""
    arrays = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


class TextToImage(LatentDiffusionPipeline):
    """A phase-2 model ready to sample on `device`: EMA UNet, text encoder, VAE, schedule and parameterisation.

    >>> pipe = TextToImage.from_checkpoint("outputs/ldm/2026-11-30/10-00-00", device="cuda")
    >>> images = pipe(["a photo of a sneaker"], sampler="dpmpp_2m", steps=25, guidance=3.0, seed=0)
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, first_stage: nn.Module, schedule: NoiseSchedule,
                 prediction: str, latent_shape: Sequence[int], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        super().__init__(unet.eval().requires_grad_(False).to(self.device), text_encoder.eval().to(self.device),
                         first_stage.eval().requires_grad_(False).to(self.device), schedule, prediction, latent_shape)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        log_dir: str | Path = "outputs") -> TextToImage:
        """From a phase-2 run directory (its last checkpoint), a `.ckpt`, or `latest` (newest run
        under `log_dir`). The VAE is the run's own copy (ldm_train/runs.py), so a moved run still loads."""
        unet, objective, cfg, checkpoint, ckpt_path = _load_unet(path, log_dir)
        first_stage = load_first_stage(str(first_stage_path(checkpoint, ckpt_path)))
        text_encoder = instantiate(cfg.text_encoder)
        return cls(unet, text_encoder, first_stage, objective.schedule, objective.prediction,
                   checkpoint["latent_shape"], device)

    def load_autoguide(self, path: str | Path, log_dir: str | Path = "outputs") -> nn.Module:
        """The UNet of another phase-2 checkpoint as the weak model of autoguidance (Karras et al. 2024): an
        earlier checkpoint of this run, or a smaller model with the same latent space, objective and text encoder."""
        unet, objective, cfg, checkpoint, _ = _load_unet(path, log_dir)
        same = (type(objective.schedule) is type(self.schedule) and objective.prediction == self.prediction
                and tuple(checkpoint["latent_shape"]) == self.latent_shape
                and getattr(unet, "config", {}).get("context_dim") == getattr(self.unet, "config", {}).get("context_dim"))
        if not same:
            raise ValueError(f"autoguide {path}: its latent shape, objective or text-context size differs from the "
                             "model's; the guide must share the latent space, objective and text encoder")
        return unet.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], sampler: SamplerName = "dpmpp_2m", steps: int = 25,
               guidance: float = 3.0, karras: bool = False, *, guidance_interval: Sequence[float] | None = None,
               guidance_rescale: float = 0.0, autoguide: nn.Module | None = None,
               ) -> torch.Tensor:  # -> B×3×H×W in [-1, 1], on CPU
        """One batch, one explicit seed per image. Guidance options: sampling/cfg.py; `autoguide` from
        `load_autoguide`."""
        guided = GuidedSampler(sampler=sampler, num_steps=steps, guidance_scale=guidance, karras=karras,
                               guidance_interval=guidance_interval, guidance_rescale=guidance_rescale)
        return self.generate(prompts, guided, seeds, guide_unet=autoguide).cpu()

    def __call__(
        self,
        prompts: Sequence[str],
        sampler: SamplerName = "dpmpp_2m",
        steps: int = 25,
        guidance: float = 3.0,
        seed: int = 0,
        batch_size: int = 64,
        output: Literal["pil", "tensor"] = "pil",
        karras: bool = False,
    ) -> list[Image.Image] | torch.Tensor:
        """Image i uses seed `seed + i`, so it is the same whatever the batch size."""
        chunks = [
            self.sample(prompts[start : start + batch_size], [seed + i for i in range(start, min(start + batch_size, len(prompts)))],
                        sampler, steps, guidance, karras)
            for start in range(0, len(prompts), batch_size)
        ]
        images = torch.cat(chunks)
        return to_pil(images) if output == "pil" else images
