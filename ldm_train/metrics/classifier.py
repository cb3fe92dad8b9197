"""A small Fashion-MNIST CNN that judges generated samples: does "a photo of a sneaker" look like one?

Trained by `scripts/train_classifier.py` (about 6 CPU minutes, seed 0) and shipped with the package as
safetensors (400 kB), its constructor arguments in the file's metadata, so numbers compare across
machines without a training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ldm_train.files import save_safetensors_atomic

NUM_CLASSES = 10
CLASSIFIER_FILE = "fashion_mnist_classifier.safetensors"
CONFIG_KEY = "config"
TRAIN_HINT = "the package ships one; retrain it with `python scripts/train_classifier.py` (about 6 minutes on a CPU)"


def fashion_classifier_path() -> Path:
    """The classifier shipped with the package (`ldm_train/metrics/weights/`), trained by
    `scripts/train_classifier.py` with its defaults; every machine judges samples with the same one."""
    return Path(__file__).resolve().parent / "weights" / CLASSIFIER_FILE


class FashionClassifier(nn.Module):
    """Stages of conv3×3 → BatchNorm → ReLU → 2×2 max-pool, then dropout and a linear head."""

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        resolution: int = 32,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if resolution % 2 ** len(channels):
            raise ValueError(
                f"resolution {resolution} must be divisible by 2**{len(channels)} (one 2×2 pool per stage)"
            )
        self.config = {
            "channels": list(channels),
            "resolution": resolution,
            "num_classes": num_classes,
            "dropout": dropout,
        }
        stages, in_channels = [], 1
        for out_channels in channels:
            # No conv bias: the BatchNorm that follows supplies one.
            stages += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*stages)
        final_size = resolution // 2 ** len(channels)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels * final_size**2, num_classes)
        )
        self.init_weights()

    def init_weights(self) -> None:
        """He init for the ReLU convs (He et al. 2015); zero bias so the head starts unbiased."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×3×H×W in [-1, 1] -> B×num_classes logits
        # Fashion-MNIST is grey; averaging the channels makes the verdict independent of any colour
        # cast a generator adds, instead of depending on weights fitted to identical R=G=B inputs.
        return self.head(self.features(x.mean(dim=1, keepdim=True)))


def save_fashion_classifier(model: FashionClassifier, path: str | Path | None = None) -> Path:
    """Write weights + constructor config (in the metadata) atomically; returns the path."""
    path = Path(path) if path is not None else fashion_classifier_path()
    return save_safetensors_atomic(model.state_dict(), path, metadata={CONFIG_KEY: json.dumps(model.config)})


def load_fashion_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> FashionClassifier:
    """The trained classifier in eval mode (strict load), from `path` or the shipped file."""
    path = Path(path) if path is not None else fashion_classifier_path()
    if not path.is_file():
        raise FileNotFoundError(f"No Fashion-MNIST classifier at {path}: {TRAIN_HINT}.")
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} has no classifier config in its metadata: {TRAIN_HINT} again.")
    config = json.loads(metadata[CONFIG_KEY])
    model = FashionClassifier(**{**config, "channels": tuple(config["channels"])})
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def predict_classes(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels N of images N×3×H×W in [-1, 1], batched on the model's device."""
    device = next(model.parameters()).device
    return torch.cat([model(batch.to(device)).argmax(dim=1).cpu() for batch in images.split(batch_size)])
