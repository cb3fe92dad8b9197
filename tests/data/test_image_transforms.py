"""Resize shorter side, crop to a square, flip; values mapped linearly to [-1, 1]."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_train.data.transforms import ResizeCrop


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 7)], -1).astype(np.uint8))


def to_unit(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1


def test_values_map_to_minus_one_one():
    image = Image.fromarray(np.array([[[0, 255, 51]]], dtype=np.uint8))
    out = ResizeCrop(1)(image, np.random.default_rng(0))
    assert out.dtype == torch.float32 and out.shape == (3, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_centre_crop_of_resized_image():
    image = gradient(40, 20)
    out = ResizeCrop(10)(image, np.random.default_rng(0))
    expected = np.asarray(image.resize((20, 10), Image.Resampling.BICUBIC, reducing_gap=3.0))[:, 5:15]
    torch.testing.assert_close(out, to_unit(expected))


def test_exact_size_passes_through_unchanged():
    image = gradient(12, 12)
    torch.testing.assert_close(ResizeCrop(12)(image, np.random.default_rng(0)), to_unit(np.asarray(image)))


def test_random_crop_and_flip_use_the_generator():
    image = gradient(30, 10)
    transform = ResizeCrop(10, random_crop=True, hflip=True)
    outputs = [transform(image, np.random.default_rng(seed)) for seed in range(20)]
    distinct = {tuple(out[0, 0].tolist()) for out in outputs}
    assert len(distinct) > 5  # different crops / flips
    torch.testing.assert_close(transform(image, np.random.default_rng(3)), outputs[3])  # reproducible
    flipped = [out for out in outputs if out[0, 0, 0] > out[0, 0, -1]]  # x-gradient runs right to left
    assert 0 < len(flipped) < len(outputs)


def test_bad_resolution():
    with pytest.raises(ValueError, match="resolution"):
        ResizeCrop(0)
