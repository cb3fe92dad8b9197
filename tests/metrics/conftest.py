"""Fixtures for the metric tests: no network, one shared FID Inception."""

import socket
from pathlib import Path

import pytest

from ldm_train.metrics.fid import InceptionV3Features

FASHION_MNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test instead of reaching (or waiting on) the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def inception() -> InceptionV3Features:
    return InceptionV3Features()


@pytest.fixture
def fashion_mnist():
    """Skip (naming the package) when the Fashion-MNIST idx files are not installed."""
    if not FASHION_MNIST_TEST.is_file():
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")


@pytest.fixture
def assets(tmp_path, monkeypatch) -> Path:
    """A fresh, empty assets folder for the test."""
    monkeypatch.setenv("LDM_TRAIN_ASSETS", str(tmp_path / "assets"))
    return tmp_path / "assets"
