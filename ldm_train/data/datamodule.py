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


def epoch_geometry_problem(
    pattern: str, num_shards: int | None, world_size: int, batch_size: int, num_workers: int,
    samples_per_epoch: int | None, resampled: bool,
) -> str | None:
    """Why these shards, ranks, workers and epoch length cannot give every rank the same number of
    batches from disjoint shards (None: they can). Checked at start-up and, from the config, by
    ldm_train.config_rules before anything is built; `num_shards` None when not known yet."""
    if resampled and samples_per_epoch is None:
        return "resampled=True streams endlessly: also set samples_per_epoch (the epoch length)"
    if samples_per_epoch is None:
        if world_size > 1:
            return (f"training on {world_size} ranks needs equal batch counts per rank: set samples_per_epoch "
                    "(e.g. the dataset size) so every rank runs the same number of steps")
        return None
    if samples_per_epoch // (world_size * batch_size) < 1:
        return (f"samples_per_epoch={samples_per_epoch} is less than one batch per rank "
                f"({world_size} ranks × batch_size {batch_size}): raise samples_per_epoch")
    readers = world_size * max(1, num_workers)
    if not resampled and num_shards is not None and num_shards < readers:
        return (f"{num_shards} shards in {pattern!r} cannot be split disjointly over {readers} readers "
                "(ranks × workers): write more, smaller shards, lower num_workers, or set resampled=True")
    return None


class WebDatasetDataModule(L.LightningDataModule):
    """Shard patterns: local paths or brace ranges ("data/train-{000000..000099}.tar"), several
    joined with "::", a directory of .tar files, or pipe:/http(s) URLs ("pipe:aws s3 cp s3://b/x.tar -").

    caption_key: "txt" or "json:<field>" (None: empty captions); label_key: e.g. "json:label".
    pin_memory: batches in pinned host memory, only when CUDA is available (elsewhere it would only cost);
    prefetch_factor: batches each worker prepares ahead (ignored with num_workers=0).
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
        if resampled and samples_per_epoch is None:  # the rest needs the shards and the trainer: setup()
            raise ValueError(epoch_geometry_problem(train_shards, None, 1, batch_size, num_workers, None, True))
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
        problem = epoch_geometry_problem(self.train_shards, len(urls), self.world_size, self.batch_size,
                                         self.num_workers, self.samples_per_epoch, self.resampled)
        if problem:
            raise ValueError(problem)
        batches_per_epoch = None
        if self.samples_per_epoch is not None:
            batches_per_epoch = self.samples_per_epoch // (self.world_size * self.batch_size)
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
