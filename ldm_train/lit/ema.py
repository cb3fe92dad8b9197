"""Exponential moving average of a network's weights.

The average lives in `shadow`, a frozen copy of the network registered as a submodule, so it is
saved and restored with the LightningModule's checkpoint and is used directly (no weight
swapping) for validation, sampling and export.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """θ_ema ← d·θ_ema + (1 − d)·θ, with the warm-up d_n = min(decay, (1 + n) / (10 + n)) used by
    the LDM/SD code, so early averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}; use ema_decay=null to disable EMA.")
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for ema_p, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - decay)
        for ema_b, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        super().train(mode)
        self.shadow.eval()  # the average is never trained
        return self
