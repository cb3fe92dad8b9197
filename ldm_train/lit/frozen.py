"""Frozen sub-networks (phase 2's VAE and text encoder, phase 1's LPIPS) are rebuilt from their own
sources, so checkpoints hold only trainable state. Loads stay strict: the frozen parts' current
weights fill in their keys before `load_state_dict` compares key sets."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class FrozenStateMixin(nn.Module):
    """Mixin for a LightningModule: names in `frozen_submodules` are left out of `state_dict`."""

    frozen_submodules: tuple[str, ...] = ()

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefixes = tuple(f"{kwargs.get('prefix', '')}{name}." for name in self.frozen_submodules)
        for key in [k for k in state if k.startswith(prefixes)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        merged = dict(state_dict)
        for name in self.frozen_submodules:
            module = self.get_submodule(name)
            for key, value in module.state_dict().items():
                merged.setdefault(f"{name}.{key}", value)
        return super().load_state_dict(merged, strict=strict, assign=assign)
