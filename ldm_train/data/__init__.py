"""Data: webdataset shards -> {"image": [-1, 1] B×3×H×W, "caption": [str], "skipped": int} batches."""

from ldm_train.data.datamodule import WebDatasetDataModule
from ldm_train.data.fashion_mnist import (
    CLASS_NAMES,
    FashionMNISTDataModule,
    caption_for,
    ensure_fashion_mnist_shards,
)
from ldm_train.data.image_folder import ConversionReport, folder_to_shards
from ldm_train.data.skip_logging import SkippedSamplesLogger
from ldm_train.data.stream import EpochLoader, ShardStream

__all__ = [
    "CLASS_NAMES",
    "ConversionReport",
    "EpochLoader",
    "FashionMNISTDataModule",
    "ShardStream",
    "SkippedSamplesLogger",
    "WebDatasetDataModule",
    "caption_for",
    "ensure_fashion_mnist_shards",
    "folder_to_shards",
]
