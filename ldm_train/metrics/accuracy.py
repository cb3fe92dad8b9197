"""Classification accuracy, overall and per class (the generation-accuracy metric)."""

from __future__ import annotations

import torch


def class_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, float | list[float]]:
    """{"accuracy": fraction correct, "per_class": fraction correct among each true class}.

    A class with no samples gets NaN, not 0 (torchmetrics' choice), so a missing class can never pass
    for a failed one.
    """
    if predictions.shape != labels.shape or labels.ndim != 1:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} must be equal 1-D shapes"
        )
    if labels.numel() == 0:
        raise ValueError("class_accuracy needs at least one sample")
    correct = (predictions == labels).double()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    counts = torch.bincount(labels, minlength=num_classes).double()
    per_class = hits / counts  # 0/0 -> NaN for absent classes
    return {"accuracy": correct.mean().item(), "per_class": per_class.tolist()}
