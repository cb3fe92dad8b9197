"""Resize + crop + optional flip of an RGB image to a square training tensor in [-1, 1]."""

import numpy as np
import torch
from PIL import Image

# Bicubic with Pillow's antialiasing (its resize filters widen with the scale factor) keeps
# downscaled photos free of aliasing; `reducing_gap` first shrinks by whole factors, much faster
# on large inputs at no visible cost.
_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 3.0
_MAX_PIXEL = 255.0


class ResizeCrop:
    """Shorter side -> `resolution`, then a `resolution`² crop (centre or random), optional h-flip.

    Randomness comes from the caller's generator so a stream seeded per (epoch, rank, worker)
    gives reproducible crops and flips.
    """

    def __init__(self, resolution: int, random_crop: bool = False, hflip: bool = False):
        if resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        self.resolution = resolution
        self.random_crop = random_crop
        self.hflip = hflip

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:  # -> 3×R×R
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        if size != image.size:
            image = image.resize(size, _RESAMPLE, reducing_gap=_REDUCING_GAP)
        left, top = self._offsets(size, rng)
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))  # R×R×3 in [0, 255]
        return pixels.div_(_MAX_PIXEL / 2).sub_(1.0).permute(2, 0, 1)  # a view; collate stacks it

    def _offsets(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
        spare_x, spare_y = size[0] - self.resolution, size[1] - self.resolution
        if self.random_crop:
            return int(rng.integers(spare_x + 1)), int(rng.integers(spare_y + 1))
        return spare_x // 2, spare_y // 2
