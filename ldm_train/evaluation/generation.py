"""Phase 2: how good are the samples? FID and KID against a real reference set, and, where the
prompts name classes that a classifier can recognise (Fashion-MNIST), class accuracy.

K samples per prompt from fixed prompts and seeds: sample i of the job uses seed `seed + i`
whatever the batch size or the number of ranks, so the in-training callback, `scripts/evaluate.py`
and a DDP run evaluate the same images. Each rank samples its share (`sharding.shard`), extracts
Inception features and class predictions for it; the rows are gathered and every rank computes the
same scalars.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torchvision
from torch import nn

from ldm_train.data.fashion_mnist import CLASS_NAMES
from ldm_train.evaluation.reference import RealReference, extract_features, reference_features
from ldm_train.evaluation.results import EvaluationResult, count_label, metric_name
from ldm_train.evaluation.sharding import gather_objects, gather_rows, gather_selected, rank_and_world, shard
from ldm_train.metrics.accuracy import class_accuracy, class_prompts, fit_to_classifier
from ldm_train.metrics.classifier import load_fashion_classifier, predict_classes
from ldm_train.metrics.distances import KID_SUBSET_SIZE, KID_SUBSETS, fid, kid
from ldm_train.metrics.fid import INCEPTION_NAME, InceptionV3Features, to_uint8_levels

log = logging.getLogger(__name__)
SampleFn = Callable[[list[str], list[int]], torch.Tensor]  # prompts, seeds -> B×3×H×W in [-1, 1]
ClassSet = Literal["fashion_mnist"]


class GenerationEvaluator:
    """Samples `per_prompt` images for each prompt and scores them; see the module docstring."""

    def __init__(
        self,
        reference: RealReference,
        # Images per prompt (K). With the 10 class prompts, per_prompt=100 gives the 1,000-sample protocol.
        per_prompt: int = 10,
        # "fashion_mnist": the prompts "a photo of a <class>" with their labels, judged by the trained
        # Fashion-MNIST classifier (class accuracy); null: use `prompts`, no accuracy.
        classes: ClassSet | None = "fashion_mnist",
        # Explicit prompts (only with classes=null).
        prompts: Sequence[str] | None = None,
        # Sample i uses seed `seed + i`.
        seed: int = 0,
        # Sampling batch per rank; Inception batch.
        batch_size: int = 100,
        feature_batch_size: int = 50,
        # KID: mean/std of the unbiased MMD² over random subsets (capped at the set sizes).
        kid_subsets: int = KID_SUBSETS,
        kid_subset_size: int = KID_SUBSET_SIZE,
        # Columns of the grid image (one row per prompt).
        grid_per_prompt: int = 8,
        # Classifier file for classes="fashion_mnist" (null: the shipped one, or the assets folder's).
        classifier_path: str | None = None,
    ) -> None:
        if per_prompt < 1:
            raise ValueError(f"per_prompt must be >= 1, got {per_prompt}")
        if (classes is None) == (prompts is None):
            raise ValueError("give exactly one of evaluation classes (e.g. fashion_mnist) or an explicit prompt list")
        if batch_size < 1 or feature_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {feature_batch_size}")
        self.reference = reference
        self.per_prompt = per_prompt
        self.classes = classes
        self.prompts = list(prompts) if prompts is not None else None
        self.seed = seed
        self.batch_size = batch_size
        self.feature_batch_size = feature_batch_size
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.grid_per_prompt = min(grid_per_prompt, per_prompt)
        self.classifier_path = classifier_path
        # Loaded once, on first use (every rank holds its own copy).
        self._inception: nn.Module | None = None
        self._classifier: nn.Module | None = None
        self._reference_features: torch.Tensor | None = None

    # -- what is sampled -------------------------------------------------------------------------
    def job(self) -> tuple[list[str], torch.Tensor | None, list[int]]:
        """All N prompts (K consecutive per distinct prompt), their labels (or None), their seeds."""
        if self.classes == "fashion_mnist":
            prompts, labels = class_prompts(self.per_prompt)
        else:
            prompts, labels = [p for p in self.prompts for _ in range(self.per_prompt)], None
        return prompts, labels, [self.seed + i for i in range(len(prompts))]

    def setup(self, device: torch.device | str) -> None:
        """Load the feature network, the classifier and the reference features (fails fast if missing)."""
        if self._inception is None:
            self._inception = InceptionV3Features().to(device)
        if self.classes == "fashion_mnist" and self._classifier is None:
            self._classifier = load_fashion_classifier(self.classifier_path, device)
        if self._reference_features is None:
            self._reference_features = reference_features(
                self.reference, self._inception, INCEPTION_NAME, self.feature_batch_size, device
            )

    # -- the evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, sample: SampleFn, device: torch.device | str, keep_samples: bool = False) -> EvaluationResult:
        self.setup(device)
        prompts, labels, seeds = self.job()
        count, mine = len(prompts), shard(len(prompts))
        start = time.perf_counter()
        local = torch.cat([
            sample([prompts[i] for i in chunk], [seeds[i] for i in chunk]).float().cpu()
            for chunk in _chunks(mine, self.batch_size)
        ]) if mine else torch.zeros(0)
        sampling_seconds = time.perf_counter() - start
        local_levels = to_uint8_levels(local).to(torch.uint8) if mine else local  # what a saved PNG holds
        features = gather_rows(extract_features(self._inception, local_levels, self.feature_batch_size, device),
                               count, device)
        n = count_label(count)
        fake_kid, kid_std = kid(self._reference_features, features, self.kid_subsets, self.kid_subset_size)
        metrics = {f"fid@{n}": fid(self._reference_features, features), f"kid@{n}": fake_kid,
                   f"kid_std@{n}": kid_std}
        details: dict = {"n": count, "per_prompt": self.per_prompt, "seed": self.seed, "reference": self.reference.label,
                         "reference_n": self.reference.n, "feature_network": INCEPTION_NAME}
        if self._classifier is not None and labels is not None:
            # The classifier sees the saved (quantised) images too.
            images = local_levels.float() / 127.5 - 1
            resized = fit_to_classifier(images, self._classifier.config["resolution"]) if mine else images
            local_pred = predict_classes(self._classifier, resized) if mine else torch.zeros(0, dtype=torch.long)
            predictions = gather_rows(local_pred[:, None], count, device)[:, 0]
            scores = class_accuracy(predictions, labels, len(CLASS_NAMES))
            metrics["class_accuracy"] = scores["accuracy"]
            per_class = dict(zip(CLASS_NAMES, scores["per_class"]))
            metrics.update({f"class_accuracy/{metric_name(c)}": a for c, a in per_class.items()})
            details["per_class_accuracy"] = per_class
        # Throughput of this rank's sampling (all ranks sample in parallel).
        details["samples_per_s"] = len(mine) * rank_and_world()[1] / max(sampling_seconds, 1e-9)
        details["sampling_seconds"] = sampling_seconds
        details["work_per_rank"] = gather_objects(len(mine))
        grid = self._grid(mine, local_levels, count)
        samples = torch.stack(gather_selected(mine, local_levels, range(count))) if keep_samples else None
        return EvaluationResult(metrics, details, grid, grid_nrow=self.grid_per_prompt, samples=samples,
                                prompts=prompts, seeds=seeds)

    def _grid(self, mine: list[int], local: torch.Tensor, count: int) -> torch.Tensor:
        """One row per distinct prompt, its first `grid_per_prompt` samples; 3×H×W in [0, 1]."""
        wanted = {p * self.per_prompt + j for p in range(count // self.per_prompt) for j in range(self.grid_per_prompt)}
        return _make_grid(gather_selected(mine, local, wanted), self.grid_per_prompt)


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[s : s + size] for s in range(0, len(indices), size)]


def _make_grid(images: list[torch.Tensor], nrow: int) -> torch.Tensor:  # uint8 C×H×W each -> 3×H'×W' in [0, 1]
    batch = torch.stack(images).float() / 255
    return torchvision.utils.make_grid(batch.expand(-1, 3, -1, -1), nrow=nrow, padding=2)
