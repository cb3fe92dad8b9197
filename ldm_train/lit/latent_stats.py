"""Latent statistics over several batches and every rank (not rank 0's first batch)."""

from __future__ import annotations

import itertools

import torch
from torch import nn


@torch.no_grad()
def estimate_latent_std(
    autoencoder: nn.Module, loader, num_batches: int, device: torch.device, strategy=None,
    generator: torch.Generator | None = None,
) -> float:
    """Std of posterior samples z ~ q(z|x) over `num_batches` per rank, pooled over all ranks; the
    samples' noise from `generator` (None: the global stream).

    Sums of z and z² and the count are reduced with `strategy.reduce(..., "sum")`, so the result
    equals the std over the union of all ranks' batches."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # Σz, Σz², n
    for batch in itertools.islice(loader, num_batches):
        z = autoencoder.encode(batch["image"].to(device)).sample(generator).double()
        totals += torch.stack([z.sum(), z.square().sum(), torch.tensor(z.numel(), dtype=torch.float64, device=device)])
    if strategy is not None:
        totals = strategy.reduce(totals, reduce_op="sum")
    total, total_sq, n = totals.tolist()
    if n == 0:
        raise ValueError("estimate_latent_std: the loader yielded no batches; give a loader with data.")
    mean = total / n
    return float(max(total_sq / n - mean * mean, 0.0) ** 0.5)
