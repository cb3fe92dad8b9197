"""LightningDataModule over webdataset shards: the one production data path.

Batches: {"image": float32 B×3×H×W in [-1, 1], "caption": list[str], "skipped": int} (+ "label": B
int64 with `label_key`). `skipped` counts samples dropped since the worker's previous batch; add
`SkippedSamplesLogger` to the callbacks to log the running total as `data/skipped`.

DDP: every rank must run the same number of steps, so multi-rank training needs a fixed epoch
length: `samples_per_epoch` (all ranks together) becomes `samples_per_epoch // (world_size ×
batch_size)` full batches on every rank. Without it training is one exact pass over the shards,
allowed only on a single rank. Validation is always one exact, deterministic pass (centre crop, no
flip) split over ranks; ranks may then see different numbers of validation batches, so validation
metrics should be synchronised at epoch end (torchmetrics does), not per step.
"""

import lightning as L
import torch

from ldm_train.constraints import NonNegativeInt, PositiveInt, check_arguments
from ldm_train.data.samples import SampleDecoder
from ldm_train.data.shardlist import expand_shards
from ldm_train.data.stream import EpochLoader, ShardStream
from ldm_train.data.transforms import ResizeCrop


class WebDatasetDataModule(L.LightningDataModule):
    """Shard patterns: local paths or brace ranges ("data/train-{000000..000099}.tar"), several
    joined with "::", a directory of .tar files, or pipe:/http(s) URLs ("pipe:aws s3 cp s3://b/x.tar -").

    caption_key: "txt" or "json:<field>" (None: empty captions); label_key: e.g. "json:label".
    rank/world_size are only used without a Trainer (tests, scripts); under a Trainer they come
    from `trainer.global_rank` / `trainer.world_size` in `setup`.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        batch_size: PositiveInt = 32,
        val_batch_size: PositiveInt | None = None,
        resolution: PositiveInt = 256,
        num_workers: NonNegativeInt = 4,
        caption_key: str | None = "txt",
        label_key: str | None = None,
        random_crop: bool = False,
        hflip: bool = True,
        shuffle_buffer: NonNegativeInt = 1000,
        samples_per_epoch: PositiveInt | None = None,
        resampled: bool = False,
        seed: NonNegativeInt = 0,
        persistent_workers: bool = True,
        pin_memory: bool = True,
        prefetch_factor: PositiveInt = 2,
        rank: NonNegativeInt = 0,
        world_size: PositiveInt = 1,
    ):
        super().__init__()
        check_arguments(WebDatasetDataModule.__init__, locals())
        if resampled and samples_per_epoch is None:
            raise ValueError(
                "resampled=True streams endlessly: also set samples_per_epoch (the epoch length)"
            )
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.resolution = resolution
        self.num_workers = num_workers
        self.caption_key = caption_key
        self.label_key = label_key
        self.random_crop = random_crop
        self.hflip = hflip
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.resampled = resampled
        self.seed = seed  # must be the same on every rank: the shard split relies on it
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.rank = rank
        self.world_size = world_size
        self.train_stream: ShardStream | None = None
        self.val_stream: ShardStream | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        # Patterns are checked here, at start-up, so a typo fails before any training step.
        if stage in (None, "fit"):
            self.train_stream = self._train_stream(expand_shards(self.train_shards))
        if self.val_shards is not None and stage in (None, "fit", "validate"):
            self.val_stream = self._stream(expand_shards(self.val_shards), self.val_batch_size, augment=False)

    def _train_stream(self, urls: list[str]) -> ShardStream:
        batches_per_epoch = None
        if self.samples_per_epoch is not None:
            batches_per_epoch = self.samples_per_epoch // (self.world_size * self.batch_size)
            if batches_per_epoch < 1:
                raise ValueError(
                    f"samples_per_epoch={self.samples_per_epoch} is less than one batch per rank "
                    f"({self.world_size} ranks × batch_size {self.batch_size}): raise samples_per_epoch"
                )
            readers = self.world_size * max(1, self.num_workers)
            if not self.resampled and len(urls) < readers:
                raise ValueError(
                    f"{len(urls)} shards in {self.train_shards!r} cannot be split disjointly over {readers} "
                    "readers (ranks × workers): write more, smaller shards, lower num_workers, or set resampled=True"
                )
        elif self.world_size > 1:
            raise ValueError(
                f"training on {self.world_size} ranks needs equal batch counts per rank: set samples_per_epoch "
                "(e.g. the dataset size) so every rank runs the same number of steps"
            )
        return self._stream(urls, self.batch_size, augment=True, batches_per_epoch=batches_per_epoch)

    def _stream(self, urls: list[str], batch_size: int, augment: bool, batches_per_epoch: int | None = None):
        transform = ResizeCrop(
            self.resolution, random_crop=augment and self.random_crop, hflip=augment and self.hflip
        )
        return ShardStream(
            urls,
            SampleDecoder(transform, caption_key=self.caption_key, label_key=self.label_key),
            batch_size,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=augment,
            shuffle_buffer=self.shuffle_buffer if augment else 0,
            batches_per_epoch=batches_per_epoch,
            resampled=augment and self.resampled,
            seed=self.seed,
        )

    def train_dataloader(self) -> EpochLoader:
        return self._loader(self._require(self.train_stream, "train"))

    def val_dataloader(self) -> EpochLoader | list:
        if self.val_shards is None:
            return []  # Lightning skips validation for an empty list
        return self._loader(self._require(self.val_stream, "val"))

    def _loader(self, stream: ShardStream) -> EpochLoader:
        workers = self.num_workers > 0
        return EpochLoader(
            stream,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.prefetch_factor if workers else None,
        )

    @staticmethod
    def _require(stream: ShardStream | None, split: str) -> ShardStream:
        if stream is None:
            raise RuntimeError(
                f"the {split} stream is not built: call datamodule.setup() first (Lightning does)"
            )
        return stream
