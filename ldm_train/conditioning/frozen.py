"""Frozen pretrained modules: always in eval mode, no gradients, and no weights in our checkpoints.

A pretrained text encoder is conditioning, not model: training it would change what the UNet is
conditioned on, and storing hundreds of MB of public weights in every checkpoint is waste. Its weights
come from `from_pretrained` each time the module is built.
"""

from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn


class FrozenModule(nn.Module):
    """Base class for pretrained modules that are never trained and never checkpointed.

    - `freeze()` puts the module in eval mode and turns off `requires_grad` (call it at the end of `__init__`);
    - `train(mode)` keeps it in eval mode (dropout off), whatever the owning module asks;
    - `state_dict()` contributes nothing, and `load_state_dict` keeps the pretrained weights, so an owning
      LightningModule's checkpoint holds only its trainable state and still loads strictly.
    """

    frozen = True  # marker for owners that want to treat frozen children specially (e.g. model summaries)

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenModule":
        return super().train(False)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        # nn.Module.state_dict recurses by calling each child's state_dict(destination=..., prefix=...):
        # returning the destination untouched leaves this subtree out of the owner's state dict.
        return OrderedDict() if destination is None else destination

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Children are loaded from the same dict after this call: fill in our own (pretrained) tensors for
        # every key the checkpoint lacks, so a strict load neither reports them missing nor changes them.
        for key, tensor in nn.Module.state_dict(self, prefix=prefix, keep_vars=True).items():
            state_dict.setdefault(key, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(nn.Module.parameters(self)).device


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters an optimizer should see: frozen encoders (requires_grad False) are left out."""
    return (p for p in module.parameters() if p.requires_grad)
