"""ldm_train/train.py's own duties: one determinism setting, the Trainer's."""

from __future__ import annotations

import os

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import compose_config


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # set by Lightning; removed again afterwards
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = benchmark


def test_deterministic_true_is_the_trainers_strict_mode(tmp_path, restore_determinism):
    """`deterministic=true` reaches the Trainer only (Lightning: torch.use_deterministic_algorithms(True), which
    also makes cuDNN pick deterministic kernels, a fixed cuBLAS workspace, no cuDNN autotuning): an operation
    without a deterministic kernel raises, none only warns."""
    cfg = compose_config(["stage=autoencoder", "deterministic=true", "logger=none", "callbacks=none"], tmp_path)
    assert cfg.trainer.deterministic is True and cfg.trainer.benchmark is False
    instantiate(cfg.trainer, logger=False)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not torch.backends.cudnn.benchmark
