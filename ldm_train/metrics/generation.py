"""Class-conditional generation metrics on Fashion-MNIST: does the sample show the prompted class
(accuracy of a trained classifier), and is the sample set distributed like the real one (FID)?
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ldm_train.data.fashion_mnist import CLASS_NAMES, caption_for
from ldm_train.metrics.accuracy import class_accuracy
from ldm_train.metrics.classifier import predict_classes

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


def generation_accuracy(
    images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, batch_size: int = 256
) -> dict[str, float | dict[str, float]]:
    """Fraction of samples (B×3×H×W in [-1, 1]) the classifier assigns to their prompted class."""
    resolution = classifier.config["resolution"]
    predictions = predict_classes(classifier, fit_to_classifier(images, resolution), batch_size)
    scores = class_accuracy(predictions, labels, len(CLASS_NAMES))
    return {"accuracy": scores["accuracy"], "per_class": dict(zip(CLASS_NAMES, scores["per_class"]))}


@torch.no_grad()
def fid_of_samples(images: torch.Tensor, fid: FrechetInceptionDistance, batch_size: int = 50) -> float:
    """FID of samples against the real statistics already in `fid` (made with reset_real_features=False).

    The fake half is reset afterwards, so one metric serves several sample sets.
    """
    if int(fid.real_features_num_samples) < 2:
        raise ValueError(
            "the FID metric holds no real statistics: update it with real images (real=True) first"
        )
    for batch in images.split(batch_size):
        fid.update(batch.to(fid.device), real=False)
    score = float(fid.compute())
    fid.reset()
    return score
