"""Evaluation metrics: Inception features and the distances on them (FID, KID), reconstruction
scores, the Fashion-MNIST classifier. The evaluators that run them live in `ldm_train.evaluation`."""

from ldm_train.metrics.accuracy import class_accuracy, class_prompts
from ldm_train.metrics.classifier import (
    FashionClassifier,
    fashion_classifier_path,
    load_fashion_classifier,
    predict_classes,
    save_fashion_classifier,
)
from ldm_train.metrics.distances import FeatureStatistics, fid, kid
from ldm_train.metrics.fid import InceptionV3Features, inception_weights_path
from ldm_train.metrics.reconstruction import per_image_scores, reconstruct

__all__ = [
    "FashionClassifier",
    "FeatureStatistics",
    "InceptionV3Features",
    "class_accuracy",
    "class_prompts",
    "fashion_classifier_path",
    "fid",
    "inception_weights_path",
    "kid",
    "load_fashion_classifier",
    "per_image_scores",
    "predict_classes",
    "reconstruct",
    "save_fashion_classifier",
]
