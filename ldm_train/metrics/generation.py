"""Class-conditional generation on Fashion-MNIST: the class prompts and their labels, and the resize
that brings samples of any resolution to the classifier's (used by `ldm_train.evaluation.generation`).
"""

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
