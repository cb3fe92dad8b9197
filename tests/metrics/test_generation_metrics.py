"""Generation metrics: accuracy on known labels, class prompts, and eval_generation end to end with a stub
text-to-image pipeline and cheap FID features (the real classifier and FID code paths, tiny sizes)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ldm_train.data.fashion_mnist import CLASS_NAMES
from ldm_train.metrics.accuracy import class_accuracy
from ldm_train.metrics.classifier import FashionClassifier, save_fashion_classifier
from ldm_train.metrics.fid import to_uint8_levels
from ldm_train.metrics.generation import class_prompts, generation_accuracy


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


def test_generation_accuracy_per_class_and_resizing():
    classifier = BrightnessClassifier()
    labels = torch.arange(10).repeat_interleave(3)
    images = classifier.levels[labels].view(-1, 1, 1, 1).expand(-1, 3, 64, 64).clone()
    images[labels == 4] = classifier.levels[5]  # every "coat" looks like a sandal
    scores = generation_accuracy(images, labels, classifier)  # 64 px samples, resized to the classifier's 32
    assert scores["accuracy"] == pytest.approx(0.9)
    assert scores["per_class"]["Coat"] == 0.0 and scores["per_class"]["Sandal"] == 1.0


class StubTextToImage:
    """Stands in for a trained phase-2 model: class-dependent grey levels, same API as TextToImage."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, prompts, sampler, steps, guidance, seed, batch_size, output):
        self.calls.append(dict(sampler=sampler, steps=steps, guidance=guidance, output=output))
        prompts_by_class = class_prompts(1)[0]
        levels = torch.tensor([prompts_by_class.index(p) for p in prompts]) / 10 - 0.5
        return levels.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()


class PixelFeatures(nn.Module):
    """A cheap FID feature extractor (4×4 mean grey levels) so the script test skips Inception's cost;
    the real extractor is tested in test_fid.py."""

    num_features = 16

    def forward(self, images):  # B×{1,3}×H×W uint8 or [-1, 1] -> B×16
        grey = to_uint8_levels(images).mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(grey, 4).flatten(1)


def test_eval_generation_end_to_end(load_script, assets, fashion_mnist, monkeypatch, capsys):
    script = load_script("eval_generation")
    monkeypatch.setattr(
        script,
        "fid_metric",
        lambda reset_real_features: FrechetInceptionDistance(PixelFeatures(), reset_real_features),
    )
    pipe = StubTextToImage()
    monkeypatch.setattr(script, "TextToImage", SimpleNamespace(from_checkpoint=lambda path, device: pipe))
    torch.manual_seed(0)
    save_fashion_classifier(FashionClassifier())  # untrained: exercises loading, not accuracy
    argv = ["--ckpt", "run", "--per-class", "1", "--fid-real", "3", "--steps", "2", "--guidance", "1.5"]
    assert script.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert pipe.calls == [dict(sampler="dpmpp_2m", steps=2, guidance=1.5, output="tensor")]
    assert summary["samples"] == 10 and summary["steps"] == 2 and summary["guidance"] == 1.5
    assert set(summary["per_class"]) == set(CLASS_NAMES) and 0 <= summary["accuracy"] <= 1
    assert summary["fid"] > 0 and summary["fid_real_images"] == 3
    assert (assets / "fid_stats" / "fashion_mnist_test_first3.safetensors").is_file()
    assert script.main(argv) == 0  # the second run reads the cached real statistics
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(summary["fid"], rel=1e-6)
