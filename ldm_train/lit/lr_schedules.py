"""Learning-rate schedules as LambdaLR factories of one signature: (optimizer, total_steps) → scheduler.

Configs pass them as `_partial_` objects (warm-up fixed in config); the module supplies the
optimizer and the run's total optimizer steps when it builds them. A factory returns None where
the LR never changes (constant without warm-up): the run then has no scheduler at all.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ldm_train.constraints import NonNegativeInt, UnitInterval, check_arguments


def warmup_constant(optimizer: Optimizer, total_steps: int, warmup_steps: NonNegativeInt = 0) -> LambdaLR | None:
    """Linear warm-up from 0 over `warmup_steps`, then constant (`total_steps` unused); None without
    warm-up (the factor would be 1 at every step)."""
    check_arguments(warmup_constant, locals())
    del total_steps
    if warmup_steps == 0:
        return None
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: NonNegativeInt = 0, final_lr_fraction: UnitInterval = 0.0
) -> LambdaLR:
    """Linear warm-up, then cosine decay to `final_lr_fraction`·lr at `total_steps`."""
    check_arguments(warmup_cosine, locals())

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
