"""`--device auto` (sampling, evaluation, the latent cache, the bench): the accelerator torch reports, the local
rank's device of a multi-device node, else the CPU."""

import pytest
import torch

from ldm_train import speed


@pytest.mark.parametrize(
    ("accelerator", "count", "local_rank", "expected"),
    [(None, 0, 0, "cpu"), (None, 0, 5, "cpu"), ("cuda", 8, 0, "cuda:0"), ("cuda", 8, 3, "cuda:3"),
     ("mps", 1, 0, "mps:0"), ("xpu", 4, 2, "xpu:2")],
)  # fmt: skip
def test_default_device_is_the_accelerator_of_this_rank(monkeypatch, accelerator, count, local_rank, expected):
    found = None if accelerator is None else torch.device(accelerator)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: found)
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: count)
    assert speed.default_device(local_rank) == torch.device(expected)


def test_default_device_refuses_more_local_ranks_than_devices(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="local rank 3 but this node has 2 cuda device.*nproc-per-node"):
        speed.default_device(3)
