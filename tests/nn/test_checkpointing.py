"""nn/checkpointing.py: a checkpointed block gives the plain call's outputs and gradients, and stores less."""

import torch
from torch import nn

from ldm_train.nn.checkpointing import checkpointed


def _block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.3), nn.SiLU(), nn.Linear(64, 8))


def _saved_tensors(fn) -> int:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return len(saved)


def test_checkpointed_equals_the_plain_call_with_dropout():
    block, x = _block(), torch.randn(4, 8)
    results = []
    for enabled in (False, True):
        torch.manual_seed(1)
        inputs = x.clone().requires_grad_(True)
        out = checkpointed(block, inputs, enabled=enabled)
        out.square().sum().backward()
        results.append((out.detach(), inputs.grad, block[0].weight.grad.clone()))
        block.zero_grad()
    for plain, recomputed in zip(*results):
        torch.testing.assert_close(recomputed, plain)


def test_checkpointed_stores_only_the_inputs_and_nothing_under_no_grad():
    block, x = _block(), torch.randn(4, 8, requires_grad=True)
    plain = _saved_tensors(lambda: checkpointed(block, x, enabled=False))
    kept = _saved_tensors(lambda: checkpointed(block, x, enabled=True))
    assert kept < plain
    with torch.no_grad():
        assert _saved_tensors(lambda: checkpointed(block, x, enabled=True)) == 0
