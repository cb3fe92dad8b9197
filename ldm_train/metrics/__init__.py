"""Evaluation metrics: FID on the real Inception, reconstruction scores, the Fashion-MNIST classifier."""

from ldm_train.metrics.accuracy import class_accuracy
from ldm_train.metrics.classifier import (
    FashionClassifier,
    fashion_classifier_path,
    load_fashion_classifier,
    predict_classes,
    save_fashion_classifier,
)
from ldm_train.metrics.fid import (
    InceptionV3Features,
    compute_fid,
    fid_metric,
    inception_weights_path,
    load_real_statistics,
    save_real_statistics,
)
from ldm_train.metrics.generation import class_prompts, fid_of_samples, generation_accuracy
from ldm_train.metrics.reconstruction import ReconstructionMetrics, evaluate_reconstruction, reconstruct

__all__ = [
    "FashionClassifier",
    "InceptionV3Features",
    "ReconstructionMetrics",
    "class_accuracy",
    "class_prompts",
    "compute_fid",
    "evaluate_reconstruction",
    "fashion_classifier_path",
    "fid_metric",
    "fid_of_samples",
    "generation_accuracy",
    "inception_weights_path",
    "load_fashion_classifier",
    "load_real_statistics",
    "predict_classes",
    "reconstruct",
    "save_fashion_classifier",
    "save_real_statistics",
]
