"""Class accuracy of generated samples: accuracy on known labels, class prompts, the resize to the
classifier's resolution (the evaluator itself is tested in tests/evaluation)."""

import math

import pytest
import torch
from torch import nn

from ldm_train.data.fashion_mnist import CLASS_NAMES
from ldm_train.metrics.accuracy import class_accuracy, class_prompts, fit_to_classifier
from ldm_train.metrics.classifier import predict_classes


class BrightnessClassifier(nn.Module):
    """Predicts class c for images whose mean brightness is nearest to level(c)."""

    config = {"resolution": 32}

    def __init__(self) -> None:
        super().__init__()
        self.levels = nn.Parameter(torch.linspace(-0.9, 0.9, len(CLASS_NAMES)), requires_grad=False)

    def forward(self, x):  # B×3×H×W -> B×10
        return -(x.mean(dim=(1, 2, 3))[:, None] - self.levels).abs()


def test_class_accuracy_on_known_labels():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    scores = class_accuracy(predictions, labels, num_classes=4)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["per_class"][:3] == pytest.approx([1 / 2, 1.0, 2 / 3])
    assert math.isnan(scores["per_class"][3])  # no samples: NaN, never a silent 0
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        class_accuracy(predictions, labels[:3], num_classes=4)


def test_class_prompts_follow_the_training_captions():
    prompts, labels = class_prompts(2)
    assert len(prompts) == 20 and labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert prompts[0] == "a photo of a t-shirt" and prompts[-1] == "a photo of an ankle boot"


def test_fit_to_classifier_resizes_other_resolutions_only():
    classifier = BrightnessClassifier()
    labels = torch.arange(10).repeat_interleave(3)
    images = classifier.levels[labels].view(-1, 1, 1, 1).expand(-1, 3, 64, 64).clone()
    images[labels == 4] = classifier.levels[5]  # every "coat" looks like a sandal
    resized = fit_to_classifier(images, classifier.config["resolution"])  # 64 px samples -> the classifier's 32
    assert resized.shape == (30, 3, 32, 32) and fit_to_classifier(resized, 32) is resized
    scores = class_accuracy(predict_classes(classifier, resized), labels, len(CLASS_NAMES))
    assert scores["accuracy"] == pytest.approx(0.9)
    assert scores["per_class"][4] == 0.0 and scores["per_class"][5] == 1.0
