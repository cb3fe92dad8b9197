"""Gradient checkpointing (Chen et al. 2016), the one helper of the UNet's and the autoencoder's blocks:
trade compute for activation memory by recomputing a block's activations in the backward pass."""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed(module: nn.Module, *args: torch.Tensor, enabled: bool) -> torch.Tensor:
    """module(*args), recomputing its activations in backward instead of storing them when `enabled` and
    gradients are being recorded (under no_grad there is nothing to store). Non-reentrant, with the RNG state
    restored for the recomputation: outputs and gradients equal the plain call's."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)
