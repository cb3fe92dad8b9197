"""Fashion-MNIST shards: written once from IDX files, pixels/labels/captions exactly as in the source."""

import gzip
import io
import json
import struct
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from ldm_train.data import fashion_mnist as fm
from ldm_train.data.fashion_mnist import (
    CAPTION_NOUNS,
    CLASS_NAMES,
    DEBIAN_DIR,
    FashionMNISTDataModule,
    caption_for,
    ensure_fashion_mnist_shards,
    load_split,
)
from ldm_train.data.idx import read_idx

HAVE_DEBIAN_FILES = Path(DEBIAN_DIR, "train-images-idx3-ubyte.gz").is_file()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", size) for size in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def source(tmp_path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A synthetic Fashion-MNIST in the Debian layout: 25 train and 7 test samples."""
    rng = np.random.default_rng(0)
    data = {}
    for split, prefix, count in (("train", "train", 25), ("test", "t10k", 7)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    return data


def read_samples(pattern: str) -> list[dict]:
    """Independent reader: webdataset's own pipeline, no code of ours."""
    return list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))


def check_split(pattern: str, images: np.ndarray, labels: np.ndarray) -> None:
    samples = read_samples(pattern)
    assert len(samples) == len(images)
    for index, sample in enumerate(samples):
        record = json.loads(sample["json"])
        label = int(labels[index])
        assert record == {
            "caption": caption_for(label, index),
            "label": label,
            "class_name": CLASS_NAMES[label],
            "index": index,
        }
        assert CAPTION_NOUNS[label] in record["caption"]
        pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert pixels.shape == (32, 32) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels[2:30, 2:30], images[index])
        assert pixels.sum() - pixels[2:30, 2:30].sum() == 0  # the 2 px border is background (0)


def test_shards_hold_the_source_exactly(tmp_path, source):
    patterns = ensure_fashion_mnist_shards(
        str(tmp_path / "data"), samples_per_shard=10, source_dir=str(tmp_path), allow_download=False
    )
    assert patterns["train"].endswith("train-{000000..000002}.tar") and patterns["test"].endswith(
        "test-{000000..000000}.tar"
    )
    manifest = json.loads((Path(patterns["train"]).parent / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 25 and manifest["splits"]["test"]["count"] == 7
    for split in ("train", "test"):
        check_split(patterns[split], *source[split])


def test_second_call_is_a_no_op_and_a_lost_shard_is_rewritten(tmp_path, source, monkeypatch):
    data_dir = str(tmp_path / "data")
    patterns = ensure_fashion_mnist_shards(data_dir, samples_per_shard=10, source_dir=str(tmp_path))
    shard = Path(patterns["train"]).parent / "train-000001.tar"
    stamp = shard.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(fm, "load_split", lambda *args: calls.append(args) or load_split(*args))
    assert ensure_fashion_mnist_shards(data_dir, samples_per_shard=10, source_dir=str(tmp_path)) == patterns
    assert calls == [] and shard.stat().st_mtime_ns == stamp
    shard.unlink()  # an interrupted or damaged conversion
    ensure_fashion_mnist_shards(data_dir, samples_per_shard=10, source_dir=str(tmp_path))
    assert len(calls) == 2 and shard.is_file()
    assert not list(Path(patterns["train"]).parent.glob("*.tmp-*")), "temporary files left behind"


def test_subset_takes_the_first_samples(tmp_path, source):
    patterns = ensure_fashion_mnist_shards(
        str(tmp_path / "data"),
        max_train_samples=12,
        max_test_samples=3,
        samples_per_shard=5,
        source_dir=str(tmp_path),
    )
    assert "train12-test3-shard5" in patterns["train"]
    check_split(patterns["train"], source["train"][0][:12], source["train"][1][:12])
    check_split(patterns["test"], source["test"][0][:3], source["test"][1][:3])


def test_missing_source_without_download_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        ensure_fashion_mnist_shards(
            str(tmp_path / "data"), source_dir=str(tmp_path / "none"), allow_download=False
        )


def test_failed_download_is_explained(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(fm, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match=r"could not download it \(.*unreachable.*apt-get install"):
        ensure_fashion_mnist_shards(str(tmp_path / "data"), source_dir=str(tmp_path / "none"))


def test_bad_idx_files_are_rejected(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x08\x03\x00\x00"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x.gz")
    write_idx(tmp_path / "y.gz", np.zeros((2, 3), np.uint8))
    (tmp_path / "z.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "y.gz").read_bytes())[:-1]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "z.gz")


def test_datamodule_batches_carry_labels_matching_captions(tmp_path, source):
    datamodule = FashionMNISTDataModule(
        str(tmp_path / "data"), batch_size=4, num_workers=0, max_train_samples=20, max_val_samples=7,
        samples_per_shard=5, source_dir=str(tmp_path), pin_memory=False, prefetch_factor=3,
    )  # fmt: skip
    assert (datamodule.pin_memory, datamodule.prefetch_factor) == (False, 3)  # the loader settings reach the base
    # Built with its real shards and epoch length (the shards are written first), not filled in by setup().
    assert datamodule.train_shards.endswith("train-{000000..000003}.tar") and datamodule.samples_per_epoch == 20
    assert datamodule.val_shards.endswith("test-{000000..000001}.tar")
    datamodule.setup("fit")
    train = list(datamodule.train_dataloader())
    assert len(train) == 20 // 4
    val = list(datamodule.val_dataloader())
    assert [int(label) for batch in val for label in batch["label"]] == source["test"][1].tolist()
    for batch in train + val:
        assert (
            batch["image"].shape[1:] == (3, 32, 32)
            and batch["image"].min() >= -1
            and batch["image"].max() <= 1
        )
        for caption, label in zip(batch["caption"], batch["label"].tolist()):
            assert CAPTION_NOUNS[label] in caption
    first = val[0]["image"][0]  # grey replicated to RGB, exact pixels, no flip in validation
    expected = np.pad(source["test"][0][0], 2).astype(np.float32) / 127.5 - 1
    for channel in range(3):
        np.testing.assert_allclose(first[channel].numpy(), expected, atol=1e-6)


@pytest.mark.skipif(not HAVE_DEBIAN_FILES, reason="apt-get install dataset-fashion-mnist")
def test_real_debian_files(tmp_path):
    source = {split: load_split(split) for split in ("train", "test")}
    for (images, labels), count in zip(source.values(), (60000, 10000)):
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        assert np.bincount(labels, minlength=10).tolist() == [count // 10] * 10  # balanced classes
    patterns = ensure_fashion_mnist_shards(
        str(tmp_path), max_train_samples=300, max_test_samples=100, samples_per_shard=100
    )
    check_split(patterns["train"], *(array[:300] for array in source["train"]))
    check_split(patterns["test"], *(array[:100] for array in source["test"]))


def test_processes_building_the_shards_at_once_take_turns(tmp_path, source, monkeypatch):
    """The ranks of a torchrun job build the datamodule at the same moment: one writes, the others read."""
    loads = []
    load_split = fm.load_split

    def counting(*args, **kwargs):
        loads.append(args[0])
        return load_split(*args, **kwargs)

    monkeypatch.setattr(fm, "load_split", counting)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: ensure_fashion_mnist_shards(
            str(tmp_path / "data"), max_train_samples=20, max_test_samples=7, samples_per_shard=5,
            source_dir=str(tmp_path)), range(3)))
    assert sorted(loads) == ["test", "train"] and results[0] == results[1] == results[2]
    check_split(results[0]["train"], *(array[:20] for array in source["train"]))
