"""Class accuracy of generated samples (Fashion-MNIST): prompts naming each class and their labels, the resize
that brings samples of any resolution to the classifier's, and the accuracy, overall and per class (used by
`ldm_train.evaluation.generation`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm_train.data.fashion_mnist import CLASS_NAMES, caption_for

PROMPT_TEMPLATE_INDEX = 0  # "a photo of {}": the first training caption template


def class_prompts(per_class: int) -> tuple[list[str], torch.Tensor]:
    """`per_class` prompts "a photo of a <class>" per class, grouped by class, and their labels."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = torch.arange(len(CLASS_NAMES)).repeat_interleave(per_class)
    return [caption_for(label, PROMPT_TEMPLATE_INDEX) for label in labels.tolist()], labels


def fit_to_classifier(images: torch.Tensor, resolution: int) -> torch.Tensor:  # B×3×h×w -> B×3×R×R
    """Resize samples of another resolution to the classifier's (antialiased, so no aliasing on the way down)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(
        images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )


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
