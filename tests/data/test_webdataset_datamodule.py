"""WebDatasetDataModule: start-up checks, rank from the Trainer, validation split, and the skip count
reaching the training loop through SkippedSamplesLogger."""

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import all_captions, png_bytes, write_shards
from webdataset import TarWriter

from ldm_train.data import SkippedSamplesLogger, WebDatasetDataModule
from ldm_train.data.shards import shard_pattern


def half_black_half_white(tmp_path, count: int) -> str:
    """Shard of images dark on the left, bright on the right, so a flip is visible."""
    pixels = np.zeros((8, 8), dtype=np.uint8)
    pixels[:, 4:] = 255
    with TarWriter(str(tmp_path / "shard-000000.tar")) as writer:
        for index in range(count):
            writer.write(
                {"__key__": f"k{index}", "png": png_bytes(Image.fromarray(pixels)), "txt": f"c{index}"}
            )
    return str(tmp_path / shard_pattern("shard", 1))


def test_missing_shard_fails_at_setup_naming_the_pattern(tmp_path):
    pattern = write_shards(tmp_path, num_shards=3, per_shard=2)
    (tmp_path / "shard-000001.tar").unlink()
    datamodule = WebDatasetDataModule(pattern, num_workers=0)
    with pytest.raises(
        FileNotFoundError, match=r"1 of 3 shards .*shard-\{000000\.\.000002\}\.tar.*make_shards"
    ):
        datamodule.setup("fit")


def test_missing_validation_shards_fail_at_setup_too(shards, tmp_path):
    datamodule = WebDatasetDataModule(shards, val_shards=str(tmp_path / "val-{0..3}.tar"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="val-"):
        datamodule.setup("fit")


@pytest.mark.parametrize("pattern", ["", "   "])
def test_empty_pattern_fails(pattern):
    with pytest.raises(ValueError, match="empty shard pattern"):
        WebDatasetDataModule(pattern).setup("fit")


def test_directory_without_shards_fails(tmp_path):
    with pytest.raises(ValueError, match="matches no shards"):
        WebDatasetDataModule(str(tmp_path)).setup("fit")


def test_directory_of_shards_is_a_pattern(shards, tmp_path):
    datamodule = WebDatasetDataModule(str(tmp_path / "shards"), batch_size=8, resolution=8, num_workers=0)
    datamodule.setup("fit")
    assert len(datamodule.train_stream.urls) == 8


def test_multi_rank_training_needs_a_fixed_epoch_length(shards):
    with pytest.raises(ValueError, match="samples_per_epoch"):
        WebDatasetDataModule(shards, world_size=2, rank=1).setup("fit")
    with pytest.raises(ValueError, match="resampled=True"):
        WebDatasetDataModule(shards, batch_size=2, samples_per_epoch=48, world_size=4, num_workers=4).setup(
            "fit"
        )
    with pytest.raises(ValueError, match="samples_per_epoch"):
        WebDatasetDataModule(shards, resampled=True)


def test_rank_and_world_size_come_from_the_trainer(shards):
    datamodule = WebDatasetDataModule(shards, batch_size=4, resolution=8, num_workers=1, samples_per_epoch=48)
    datamodule.trainer = SimpleNamespace(global_rank=1, world_size=2)
    datamodule.setup("fit")
    assert (datamodule.train_stream.rank, datamodule.train_stream.world_size) == (1, 2)
    loader = datamodule.train_dataloader()
    assert len(loader) == 48 // (2 * 4) == len(list(loader))


def test_validation_is_one_deterministic_pass_without_flips(tmp_path):
    pattern = half_black_half_white(tmp_path, count=12)
    datamodule = WebDatasetDataModule(
        pattern, val_shards=pattern, batch_size=3, resolution=8, num_workers=0, seed=5
    )
    datamodule.setup("fit")
    val = datamodule.val_dataloader()
    first, second = list(val), list(val)
    assert (
        [b["caption"] for b in first]
        == [b["caption"] for b in second]
        == [[f"c{i}" for i in range(j, j + 3)] for j in range(0, 12, 3)]
    )
    for batch in first:
        assert batch["image"].shape == (3, 3, 8, 8) and batch["image"].dtype == torch.float32
        assert (batch["image"][..., :4] == -1).all() and (batch["image"][..., 4:] == 1).all()
    flipped = [
        bool(image[0, 0, 0] > 0) for batch in datamodule.train_dataloader() for image in batch["image"]
    ]
    assert any(flipped) and not all(flipped)  # training flips, validation never does


class Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.captions_per_epoch: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.captions_per_epoch.setdefault(self.current_epoch, []).extend(batch["caption"])
        return (self.weight - batch["image"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skipped_samples_reach_the_logged_metric(tmp_path):
    bad = {
        1: [{"__key__": "noimage", "txt": b"lost"}],
        2: [{"__key__": "noise", "png": b"\x89PNG garbage", "txt": b"x"}],
    }
    pattern = write_shards(tmp_path, num_shards=3, per_shard=4, bad=bad)
    datamodule = WebDatasetDataModule(pattern, val_shards=pattern, batch_size=4, resolution=8, num_workers=1)
    logger = SkippedSamplesLogger()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[logger],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    probe = Probe()
    trainer.fit(probe, datamodule=datamodule)
    first, second = probe.captions_per_epoch[0], probe.captions_per_epoch[1]
    assert sorted(first) == sorted(second) == sorted(all_captions(3, 4)) and first != second  # new order
    assert logger.total == 4  # 2 bad samples × 2 epochs, never fatal
    assert trainer.callback_metrics["data/skipped"].item() == 4
    assert trainer.callback_metrics["data/val_skipped"].item() == 2
    restored = SkippedSamplesLogger()
    restored.load_state_dict(logger.state_dict())
    assert restored.total == 4


def test_every_train_sample_arrives_once_per_single_pass_epoch(shards):
    datamodule = WebDatasetDataModule(
        shards, batch_size=5, resolution=8, num_workers=2, persistent_workers=False
    )
    datamodule.setup("fit")
    captions = [c for batch in datamodule.train_dataloader() for c in batch["caption"]]
    assert sorted(captions) == sorted(all_captions(8, 6))


@pytest.mark.parametrize("cuda", [False, True], ids=["no_cuda", "cuda"])
def test_loaders_pin_memory_only_with_cuda_and_prefetch_as_configured(shards, monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # the loader is built, never iterated
    datamodule = WebDatasetDataModule(shards, val_shards=shards, batch_size=4, resolution=8, num_workers=2,
                                      pin_memory=True, prefetch_factor=5)  # fmt: skip
    datamodule.setup("fit")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert (loader.pin_memory, loader.prefetch_factor, loader.num_workers) == (cuda, 5, 2)
    unpinned = WebDatasetDataModule(shards, batch_size=4, resolution=8, num_workers=2, pin_memory=False)
    unpinned.setup("fit")
    assert (unpinned.train_dataloader().pin_memory, unpinned.train_dataloader().prefetch_factor) == (False, 2)
    in_process = WebDatasetDataModule(shards, batch_size=4, resolution=8, num_workers=0, prefetch_factor=5)
    in_process.setup("fit")
    assert in_process.train_dataloader().prefetch_factor is None  # DataLoader refuses it without workers
