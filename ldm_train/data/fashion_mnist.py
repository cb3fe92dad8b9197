"""Fashion-MNIST, the built-in real dataset, written once into webdataset shards and then read like
any other shard set.

Source: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), else
torchvision's download. Images: 28×28 grey padded with 2 px of background to 32×32 (a power of two,
so the autoencoder's downsampling divides evenly), stored as PNG (the loader replicates grey to RGB).
Each sample's json holds {"caption", "label", "class_name", "index"}; evaluation needs the label.
"""

import fcntl
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import FashionMNIST

from ldm_train.constraints import NonNegativeInt, PositiveInt
from ldm_train.data.datamodule import WebDatasetDataModule
from ldm_train.data.idx import read_idx
from ldm_train.data.shardlist import expand_shards
from ldm_train.data.shards import ShardWriter, read_manifest, write_manifest

logger = logging.getLogger(__name__)

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Each class as a noun phrase with its article, so every template reads as English.
CAPTION_NOUNS = (
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
    "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
)  # fmt: skip
CAPTION_TEMPLATES = (
    "a photo of {}", "a picture of {}", "an image of {}", "a black and white photo of {}", "a product photo of {}",
)  # fmt: skip
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SPLIT_FILE_PREFIX = {"train": "train", "test": "t10k"}
PAD = 2  # background pixels added on each side: 28 + 2·2 = 32
DEFAULT_SAMPLES_PER_SHARD = 1000  # 60 train shards: enough to split over 60 DDP ranks × workers


def caption_for(label: int, index: int = 0) -> str:
    """The caption of sample `index`: templates rotate with the index so a class gets every phrasing."""
    return CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)].format(CAPTION_NOUNS[label])


def load_split(
    split: str, source_dir: str = DEBIAN_DIR, download_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images N×28×28 and labels N of "train" or "test" (download_dir=None: never download)."""
    prefix = SPLIT_FILE_PREFIX[split]
    images_path = Path(source_dir) / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = Path(source_dir) / f"{prefix}-labels-idx1-ubyte.gz"
    if images_path.is_file() and labels_path.is_file():
        images, labels = read_idx(images_path), read_idx(labels_path)
    elif download_dir is not None:
        try:
            dataset = FashionMNIST(download_dir, train=split == "train", download=True)
        except Exception as error:  # no network shows up as URLError, HTTPError, RuntimeError, ...
            raise FileNotFoundError(
                f"Fashion-MNIST is not in {source_dir} and torchvision could not download it ({error}): "
                "install it with `apt-get install dataset-fashion-mnist`, or run once where the download works"
            ) from error
        images, labels = dataset.data.numpy(), dataset.targets.numpy()
    else:
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {source_dir} and downloading is off: "
            "install it with `apt-get install dataset-fashion-mnist` or allow the torchvision download"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels: reinstall the dataset"
        )
    return images, labels


def _png(image: np.ndarray) -> bytes:  # 28×28 uint8 -> PNG bytes of the 32×32 padded image
    buffer = io.BytesIO()
    Image.fromarray(np.pad(image, PAD)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(
    out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray, samples_per_shard: int
) -> dict:
    with ShardWriter(out_dir, split, samples_per_shard) as writer:
        for index, (image, label) in enumerate(zip(images, labels.tolist())):
            record = {
                "caption": caption_for(label, index),
                "label": label,
                "class_name": CLASS_NAMES[label],
                "index": index,
            }
            writer.write({"__key__": f"{index:06d}", "png": _png(image), "json": record})
    return {"pattern": Path(writer.pattern).name, "count": writer.count, "shards": len(writer.shards)}


def _is_complete(out_dir: Path, manifest: dict | None) -> bool:
    if manifest is None:
        return False
    try:
        for info in manifest["splits"].values():
            expand_shards(str(out_dir / info["pattern"]))
    except FileNotFoundError:
        return False
    return True


def fashion_mnist_dir(
    data_dir: str, max_train_samples: int | None, max_test_samples: int | None, samples_per_shard: int
) -> Path:
    """`<data_dir>/fashion_mnist` for the full default set; subsets and other shard sizes get their own folder."""
    if (max_train_samples, max_test_samples, samples_per_shard) == (None, None, DEFAULT_SAMPLES_PER_SHARD):
        return Path(data_dir) / "fashion_mnist"
    return (
        Path(data_dir)
        / f"fashion_mnist-train{max_train_samples or 'all'}-test{max_test_samples or 'all'}-shard{samples_per_shard}"
    )


def ensure_fashion_mnist_shards(
    data_dir: str,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    source_dir: str = DEBIAN_DIR,
    allow_download: bool = True,
) -> dict[str, str]:
    """Writes the shards once (a no-op when the manifest says they are there) and returns
    {"train": pattern, "test": pattern}. max_*_samples keep the first N samples of a split.
    Processes that call it at once (the ranks of a torchrun or SLURM job) take turns: one writes, the
    others then find the manifest."""
    for name, limit in (("max_train_samples", max_train_samples), ("max_test_samples", max_test_samples)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be >= 1 or None (all samples), got {limit}")
    out_dir = fashion_mnist_dir(data_dir, max_train_samples, max_test_samples, samples_per_shard)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        manifest = _write_once(out_dir, max_train_samples, max_test_samples, samples_per_shard, source_dir,
                               str(Path(data_dir) / "fashion_mnist_download") if allow_download else None)
    return {split: str(out_dir / info["pattern"]) for split, info in manifest["splits"].items()}


def _write_once(out_dir: Path, max_train_samples: int | None, max_test_samples: int | None, samples_per_shard: int,
                source_dir: str, download_dir: str | None) -> dict:
    """The manifest of `out_dir`, writing the shards first unless they are complete."""
    manifest = read_manifest(out_dir)
    if not _is_complete(out_dir, manifest):
        splits = {}
        for split, limit in (("train", max_train_samples), ("test", max_test_samples)):
            images, labels = load_split(split, source_dir, download_dir)
            splits[split] = _write_split(out_dir, split, images[:limit], labels[:limit], samples_per_shard)
        write_manifest(out_dir, splits, dataset="fashion-mnist", class_names=list(CLASS_NAMES), pad=PAD)
        manifest = read_manifest(out_dir)
        logger.info(
            "wrote Fashion-MNIST shards to %s: %s", out_dir, {s: i["count"] for s, i in splits.items()}
        )
    return manifest


class FashionMNISTDataModule(WebDatasetDataModule):
    """The default data config. Batches: {"image": B×3×R×R in [-1, 1], "caption", "label", "skipped"}.

    The training epoch is the train split's sample count (a fixed length, so DDP ranks stay in step);
    validation is the test split. max_train_samples / max_val_samples take a prefix for quick runs.
    The shards are written (once) when the module is built, so it starts with its real shard patterns and
    epoch length, like any other `WebDatasetDataModule`.
    """

    def __init__(
        self,
        data_dir: str,
        resolution: PositiveInt = 32,
        batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 2,
        hflip: bool = True,
        shuffle_buffer: NonNegativeInt = 1000,
        max_train_samples: PositiveInt | None = None,
        max_val_samples: PositiveInt | None = None,
        samples_per_shard: PositiveInt = DEFAULT_SAMPLES_PER_SHARD,
        source_dir: str = DEBIAN_DIR,
        seed: NonNegativeInt = 0,
        persistent_workers: bool = True,
        pin_memory: bool = True,
        prefetch_factor: PositiveInt = 2,
        rank: NonNegativeInt = 0,
        world_size: PositiveInt = 1,
    ):
        patterns = ensure_fashion_mnist_shards(data_dir, max_train_samples, max_val_samples, samples_per_shard,
                                               source_dir)
        train_count = read_manifest(Path(patterns["train"]).parent)["splits"]["train"]["count"]
        super().__init__(
            train_shards=patterns["train"],
            val_shards=patterns["test"],
            samples_per_epoch=train_count,
            batch_size=batch_size,
            resolution=resolution,
            num_workers=num_workers,
            caption_key="json:caption",
            label_key="json:label",
            hflip=hflip,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor,
            rank=rank,
            world_size=world_size,
        )
